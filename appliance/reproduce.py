"""Is an image what its recipe gives? Comparing two local images by content (`invoke images --diff
A --diff B`) and rebuilding the latest one to compare (`invoke bake --check`).

`images --diff` compares content listings (appliance/content.py: a hash of every file, kept beside
each manifest), so nothing is booted or mounted, and the qcow2 sha256 the manifests recorded.
`bake --check` trusts neither: it hashes the published qcow2 itself and, when the rebuild's bytes
differ, mounts both read-only and lists and diffs their files, so an image changed after it was
published (listing and manifest left as they were) is caught and the changed file named. What is
known not to be reproducible is listed, with the reason, in images/not-reproducible.txt: the
comparison marks those paths "known" instead of hiding them, and `bake --check` passes only on
identical bytes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance import content, disk, images, log
from appliance.cache import hash_file
from appliance.config import IMAGES, Settings
from appliance.errors import ExitStatus, die
from appliance.images import DiskImage
from appliance.table import Table

NOT_REPRODUCIBLE = IMAGES / "not-reproducible.txt"


def known_differences(path: Path = NOT_REPRODUCIBLE) -> dict[str, str]:
    """Path (or `prefix/*`) → why it differs between two bakes of one recipe."""
    known = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, _, reason = line.partition("#")
            known[pattern.strip()] = reason.strip()
    return known


def why_known(path: str, known: dict[str, str]) -> str:
    for pattern, reason in known.items():
        if path == pattern or (pattern.endswith("/*") and path.startswith(pattern[:-1])):
            return reason
    return ""


@dataclass(frozen=True)
class Comparison:
    a: DiskImage
    b: DiskImage
    same_bytes: bool
    files: list[content.Difference]
    packages: dict[str, tuple[str, str]]  # Debian package or wheel → (version in a, version in b)

    def unexplained(self, known: dict[str, str]) -> list[content.Difference]:
        return [d for d in self.files if not why_known(d.path, known)]


def resolve(s: Settings, ref: str) -> DiskImage:
    """A local image by its name, its file's stem, or its qcow2 path."""
    path = Path(ref).expanduser()
    if path.suffix == ".qcow2" and path.is_file():
        return images.disk_image(path.resolve())
    found = [i for i in images.local_disks(s) if ref in (i.name, i.path.name.removesuffix(".qcow2"))]
    if not found:
        die(
            f"no local image named {ref}",
            hint="`invoke images` lists them; a qcow2 path works too",
            status=ExitStatus.USAGE,
        )
    return found[-1]  # the newest of that name


def listing(image: DiskImage) -> content.Listing:
    path = images.listing_path(image)
    if not path.exists():
        die(
            f"image {image.name} has no content listing ({path.name})",
            hint="images baked before listings existed, or on the Packer path, have none: bake it again",
        )
    return content.load(path)


def pins_from(s: Settings, ref: str) -> dict[str, str]:
    """The Debian package versions an earlier image recorded: a local image's name, its qcow2, or
    a manifest file (kept when the image itself is gone)."""
    path = Path(ref).expanduser()
    manifest = path if path.name.endswith(".manifest.json") and path.is_file() else resolve(s, ref).manifest
    try:
        pins = json.loads(manifest.read_text())["debian_packages"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        die(f"{manifest} is not an image manifest with debian_packages ({e})", hint="`invoke images` lists them")
    if not isinstance(pins, dict) or not pins:
        die(f"{manifest} records no Debian packages", hint="`invoke images` lists the local manifests")
    return pins


def versions(image: DiskImage) -> dict[str, str]:
    manifest = json.loads(image.manifest.read_text()) if image.manifest.exists() else {}
    found = dict(manifest.get("debian_packages", {}))
    found.update({f"wheel:{n}": w["version"] for n, w in manifest.get("wheels", {}).items()})
    found.update({f"wheel:recorder/{n}": w["version"] for n, w in manifest.get("recorder_wheels", {}).items()})
    if "webclient" in manifest:
        found["webclient"] = f"{manifest['webclient'].get('name')} {manifest['webclient'].get('sha256', '')[:12]}"
    return found


def version_changes(a: DiskImage, b: DiskImage) -> dict[str, tuple[str, str]]:
    va, vb = versions(a), versions(b)
    return {n: (va.get(n, "-"), vb.get(n, "-")) for n in sorted(set(va) | set(vb)) if va.get(n) != vb.get(n)}


def compare(a: DiskImage, b: DiskImage) -> Comparison:
    same = images.qcow2_sha256(a) == images.qcow2_sha256(b)
    return Comparison(a, b, same, content.diff(listing(a), listing(b)), version_changes(a, b))


def show(cmp: Comparison, known: dict[str, str], as_json: bool, details: dict[str, str] | None = None) -> None:
    """The differences as a table (TSV when piped, JSON with --json); `details` (path → a short diff)
    follow the table, or go in each JSON row as "diff"."""
    details = details or {}
    table = Table("path", "change", "what", "known (images/not-reproducible.txt)")
    for name, (before, after) in cmp.packages.items():
        table.add(f"package {name}", "version", f"{before} → {after}", "")
    for d in cmp.files:
        table.add(d.path, d.change, d.what(), why_known(d.path, known))
    if as_json:
        rows = table.as_dicts()
        for row in rows:
            if row["path"] in details:
                row["diff"] = details[row["path"]]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    unexplained = len(cmp.unexplained(known))
    log.console.print(
        f"{cmp.a.name} vs {cmp.b.name}: "
        + ("same bytes" if cmp.same_bytes else "different bytes")
        + f"; {len(cmp.files)} paths differ ({unexplained} not known), {len(cmp.packages)} versions differ"
    )
    if table.rows:
        table.show()
    for text in details.values():
        if text:
            log.out.print(text, markup=False)


def diff_images(s: Settings, refs: list[str], as_json: bool = False) -> ExitStatus:
    if len(refs) != 2:
        die(
            "--diff takes two images",
            hint="invoke images --diff A --diff B (names from `invoke images`)",
            status=ExitStatus.USAGE,
        )
    cmp = compare(resolve(s, refs[0]), resolve(s, refs[1]))
    show(cmp, known_differences(), as_json)
    return ExitStatus.OK if cmp.same_bytes or not (cmp.files or cmp.packages) else ExitStatus.DIFFERENT


def check(s: Settings, as_json: bool = False) -> ExitStatus:
    """Rebuild the latest image from a new base tree without the layer cache, with the package
    versions it recorded (the downloaded debs, wheels and web client reused), and compare it with
    the published one: its
    bytes, and on a difference its files as the published qcow2 holds them (mounted read-only),
    not as the listing beside it says."""
    from appliance import bake

    if s.target != "local":
        die("bake --check rebuilds local images", hint="run it with --target local", status=ExitStatus.USAGE)
    published = images.latest_disk(s)
    if published is None:
        die("no baked image to check", hint="run `invoke bake` first", status=ExitStatus.USAGE)
    recipe = json.loads(published.manifest.read_text())["recipe_sha256"]
    with tempfile.TemporaryDirectory(dir=s.dirs.output, prefix="check-") as out:
        again = dataclasses.replace(s, dirs=dataclasses.replace(s.dirs, output=Path(out)))
        # The published image's package versions: a check after Debian has moved on fails naming
        # what it can no longer get, instead of listing every file a newer package changed.
        pins = json.loads(published.manifest.read_text())["debian_packages"]
        rebuilt = bake.bake(again, use_layers=False, expect_recipe=recipe, fresh_base=True, pins=pins)
        assert isinstance(rebuilt, DiskImage)
        theirs, ours = hash_file(published.path), images.qcow2_sha256(rebuilt)
        recorded = images.qcow2_sha256(published)
        if recorded != theirs:
            log.warn(f"{published.path.name} is not what its manifest recorded: sha256 {theirs}, recorded {recorded}")
        # Launches boot the kernel exported beside the image, not the one inside it: check it too.
        kernel_same = hash_file(published.kernel) == hash_file(rebuilt.kernel)
        if not kernel_same:
            log.warn(f"{published.kernel.name} differs from the rebuild's kernel")
        if theirs == ours and kernel_same:
            if as_json:
                sys.stdout.write("[]\n")
            log.console.print(f"reproducible: the rebuild has the published sha256 ({ours}) and kernel")
            return ExitStatus.OK
        with (
            log.step("Compare the published image's files with the rebuild's (both mounted read-only)"),
            disk.mounted_root(published.path, Path(out)) as a,
            disk.mounted_root(rebuilt.path, Path(out)) as b,
        ):
            files = content.diff(content.listing_of_disk(a), content.listing_of_disk(b))
            details = {
                d.path: content.show_difference(a, b, d.path, ("published", "rebuilt"))
                for d in files
                if d.change == "changed"
            }
        cmp = Comparison(published, rebuilt, False, files, version_changes(published, rebuilt))
        show(cmp, known_differences(), as_json, details)
    log.console.print(f"not reproducible: the rebuild's sha256 is {ours}, the published image's {theirs}")
    return ExitStatus.DIFFERENT
