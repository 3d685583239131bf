"""Bake orchestration: web client → base tree → provision (chroot) → seal gate → disk → qcow2 + SBOM."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import base, disk, log, provision, sbom, webclient
from appliance.cache import Cache, hash_file
from appliance.config import IMAGES, Settings
from appliance.errors import ExitStatus, die
from appliance.run import require

MIN_FREE_GB = 8  # base + work tree + raw disk + qcow2, with room to spare
SUITE_VERSIONS = {"trixie": "13", "bookworm": "12", "forky": "14"}


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    manifest: Path
    sbom: Path
    size: int


def images_dir(s: Settings) -> Path:
    return s.dirs.output / "images"


def kernel_for(image: Path) -> Path:
    return image.with_suffix(".vmlinuz")


def latest(s: Settings) -> Image | None:
    """The newest image baked on this machine, if any."""
    pointer = images_dir(s) / "latest.json"
    if not pointer.exists():
        return None
    data = json.loads(pointer.read_text())
    path = images_dir(s) / data["image"]
    if not path.exists():
        return None
    return Image(
        data["name"], path, images_dir(s) / data["manifest"], images_dir(s) / data["sbom"], path.stat().st_size
    )


def preflight(s: Settings) -> None:
    if os.geteuid() != 0:
        die(
            "bake needs root (mmdebstrap in root mode, chroot, mounts)",
            hint="run it as root or with sudo",
            status=ExitStatus.USAGE,
        )
    for tool in ("mmdebstrap", "qemu-img", "sfdisk", "mkfs.ext4", "chroot", "mount"):
        require(tool)
    if s.webclient == "hydrogen":
        require("npm")
    for folder in (s.dirs.cache, s.dirs.output):
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free >> 30
        if free < MIN_FREE_GB:
            die(
                f"only {free} GiB free under {folder}; a bake needs about {MIN_FREE_GB} GiB",
                hint="free some space or point outband.dirs.cache/output elsewhere",
            )


@contextlib.contextmanager
def disk_full_is_an_error() -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            die("the disk is full", hint="free some space (the artifact cache can be deleted) and bake again")
        raise


def bake(s: Settings) -> Image:
    preflight(s)
    cache = Cache(s.dirs.cache)
    with disk_full_is_an_error():
        web = webclient.prepare(s.webclient, cache)
        base_tree = base.ensure(s, cache)
        base_key = base.key(s)
        with tempfile.TemporaryDirectory(dir=s.dirs.cache, prefix="bake-") as tmp_dir:
            tmp = Path(tmp_dir)
            stage_dir = provision.stage(tmp / "stage", web.tar, s.image.extra_ca)
            recipe_hash = provision.layer_keys(base_key, stage_dir)[-1][1]
            name = f"outband-{s.image.suite}-{recipe_hash[:12]}"
            tree = provision.provision_tree(base_tree, base_key, stage_dir, tmp / "root", cache)
            with log.step("Manifest and SBOM"):
                debs = sbom.debian_packages(tree)
                wheels = sbom.locked_wheels(IMAGES / "lock/synapse.txt")
                installed = sbom.installed_wheels(tree)
                missing = [w["name"] for w in wheels if installed.get(w["name"].replace("_", "-")) != w["version"]]
                if missing:
                    die(
                        f"the Synapse venv does not match the lock for: {', '.join(missing)}",
                        hint="run `invoke lock` and bake again",
                    )
                bom = sbom.cyclonedx(name, recipe_hash, debs, wheels, web, SUITE_VERSIONS.get(s.image.suite, "?"))
            with log.step(f"Disk image ({s.image.disk_gb} GiB, BIOS/GRUB) → compressed qcow2"):
                fsid = disk.fs_uuid(recipe_hash)
                disk.prepare_boot(tree, fsid)
                # The image's kernel, kept beside it: launch's KVM probe boots it (appliance.qemu).
                shutil.copyfile((tree / "vmlinuz").resolve(), tmp / "vmlinuz")
                disk.write_disk(tree, tmp / "disk.raw", s.image.disk_gb, fsid)
                disk.to_qcow2(tmp / "disk.raw", tmp / "image.qcow2")
            return publish(s, name, recipe_hash, base_key, web, bom, debs, wheels, tmp / "image.qcow2", tmp / "vmlinuz")


def publish(
    s: Settings,
    name: str,
    recipe_hash: str,
    base_key: str,
    web: webclient.WebClient,
    bom: dict,
    debs: list,
    wheels: list,
    qcow2: Path,
    kernel: Path,
) -> Image:
    """Move the finished image under its final name; the name only ever holds a complete image."""
    out = images_dir(s)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{name}.qcow2"
    sbom_path = out / f"{name}.sbom.json"
    manifest_path = out / f"{name}.manifest.json"
    manifest = {
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "recipe_sha256": recipe_hash,
        "base_key": base_key,
        "suite": s.image.suite,
        "disk_gb": s.image.disk_gb,
        "qcow2": {"file": final.name, "sha256": hash_file(qcow2), "size": qcow2.stat().st_size},
        "webclient": {"name": web.name, "version": web.version, "sha256": web.sha256},
        "debian_packages": {d["name"]: d["version"] for d in debs},
        "wheels": {w["name"]: {"version": w["version"], "sha256": w["sha256"]} for w in wheels},
        "sbom": sbom_path.name,
    }
    sbom.write_json(sbom_path, bom)
    sbom.write_json(manifest_path, manifest)
    shutil.copyfile(kernel, kernel_for(final))
    tmp = out / f".{final.name}.tmp"
    shutil.move(qcow2, tmp)
    tmp.replace(final)
    sbom.write_json(
        out / "latest.json", {"name": name, "image": final.name, "manifest": manifest_path.name, "sbom": sbom_path.name}
    )
    return Image(name, final, manifest_path, sbom_path, final.stat().st_size)
