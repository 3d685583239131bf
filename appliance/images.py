"""What a bake produces and a launch boots: one reference type per kind of target, and the local
catalogue of images under the output directory.

- DiskImage: a local qcow2 with its exported kernel, manifest and SBOM (the local target).
- Snapshot: a cloud snapshot, known by its id and name, with the regions it is in (DigitalOcean);
  its manifest and SBOM are kept locally under the same output directory.

Publishing never replaces a file in place: an image's name carries its recipe hash and, when that
name exists already, the new bytes go under a new name (a running appliance may still read the
old file: it owns a link to it, see targets/local.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.cache import hash_file
from appliance.config import Settings


@dataclass(frozen=True)
class Image:
    name: str
    manifest: Path
    sbom: Path

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class DiskImage(Image):
    path: Path
    size: int

    @property
    def kernel(self) -> Path:
        return kernel_for(self.path)

    def describe(self) -> str:
        return f"{self.path} ({self.size / 2**20:.0f} MiB)"


@dataclass(frozen=True)
class Snapshot(Image):
    id: str
    regions: tuple[str, ...]
    created_at: str = ""

    def describe(self) -> str:
        return f"snapshot {self.name} ({self.id}, regions {', '.join(self.regions) or '-'})"


def images_dir(s: Settings) -> Path:
    return s.dirs.output / "images"


def kernel_for(image: Path) -> Path:
    """The kernel exported beside a qcow2 at bake (the local target boots it directly)."""
    return image.with_suffix(".vmlinuz")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    """`stem.suffix`, or `stem.2.suffix`… if that exists: an existing file is never replaced."""
    candidate, n = folder / f"{stem}{suffix}", 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}.{n}{suffix}"
    return candidate


def publish_disk(
    s: Settings, name: str, qcow2: Path, kernel: Path, manifest: dict, bom: dict, listing: bytes | None = None
) -> DiskImage:
    """Move a finished local image into the catalogue, with its kernel, manifest, SBOM and content listing."""
    out = images_dir(s)
    out.mkdir(parents=True, exist_ok=True)
    final = _free_name(out, name, ".qcow2")
    stem = final.name.removesuffix(".qcow2")
    manifest_path, sbom_path = out / f"{stem}.manifest.json", out / f"{stem}.sbom.json"
    manifest = {
        **manifest,
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "qcow2": {"file": final.name, "sha256": hash_file(qcow2), "size": qcow2.stat().st_size},
        "sbom": sbom_path.name,
    }
    if listing is not None:
        listing_path = out / f"{stem}.files.tsv.gz"
        listing_path.write_bytes(listing)
        manifest["content"] = {"file": listing_path.name, "sha256": hashlib.sha256(listing).hexdigest()}
    write_json(sbom_path, bom)
    write_json(manifest_path, manifest)
    shutil.copyfile(kernel, kernel_for(final))
    tmp = out / f".{final.name}.tmp"
    shutil.move(qcow2, tmp)
    os.link(tmp, final)  # fails rather than replace, should another bake have taken the name meanwhile
    tmp.unlink()
    write_json(out / "latest.json", {"name": name, "image": final.name, "manifest": manifest_path.name})
    return DiskImage(name, manifest_path, sbom_path, final, final.stat().st_size)


def disk_image(path: Path) -> DiskImage:
    """A local image by its qcow2 path (its manifest beside it, if it has one)."""
    stem = path.name.removesuffix(".qcow2")
    manifest = path.with_name(f"{stem}.manifest.json")
    name = json.loads(manifest.read_text())["name"] if manifest.exists() else stem
    return DiskImage(name, manifest, path.with_name(f"{stem}.sbom.json"), path, path.stat().st_size)


def latest_disk(s: Settings) -> DiskImage | None:
    pointer = images_dir(s) / "latest.json"
    if not pointer.exists():
        return None
    path = images_dir(s) / json.loads(pointer.read_text())["image"]
    return disk_image(path) if path.exists() else None


def local_disks(s: Settings) -> list[DiskImage]:
    """The local catalogue, oldest first."""
    found = [disk_image(p) for p in images_dir(s).glob("*.qcow2") if not p.name.startswith(".")]
    return sorted(found, key=lambda i: i.path.stat().st_mtime)


def remove_disk(image: DiskImage) -> None:
    for path in (image.path, image.kernel, image.manifest, image.sbom, listing_path(image)):
        path.unlink(missing_ok=True)


def qcow2_sha256(image: DiskImage) -> str:
    """As the manifest recorded it at publish (the file is hashed when there is no manifest)."""
    if image.manifest.exists():
        recorded = json.loads(image.manifest.read_text()).get("qcow2", {}).get("sha256")
        if recorded:
            return recorded
    return hash_file(image.path)


def listing_path(image: Image) -> Path:
    return image.manifest.with_name(image.manifest.name.removesuffix(".manifest.json") + ".files.tsv.gz")


def publish_snapshot_manifest(s: Settings, snapshot: Snapshot, manifest: dict, bom: dict) -> Snapshot:
    """A cloud snapshot's manifest and SBOM, kept locally beside the disk images."""
    out = images_dir(s)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path, sbom_path = out / f"{snapshot.name}.manifest.json", out / f"{snapshot.name}.sbom.json"
    write_json(sbom_path, bom)
    write_json(
        manifest_path,
        {**manifest, "name": snapshot.name, "snapshot": {"id": snapshot.id, "regions": list(snapshot.regions)}},
    )
    return Snapshot(snapshot.name, manifest_path, sbom_path, snapshot.id, snapshot.regions, snapshot.created_at)
