"""The one bake pipeline: web client → staged recipe → provisioning (swappable) → manifest + SBOM →
the target publishes the image. Which provisioning step runs is the target's choice
(targets/*.provisioner): a chroot or Packer's qemu source locally, Packer's digitalocean source.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from appliance import provision, sbom, webclient
from appliance.cache import Cache
from appliance.config import IMAGES, Settings
from appliance.errors import ExitStatus, die
from appliance.images import Image
from appliance.run import require

MIN_FREE_GB = 8  # base + work tree + raw disk + qcow2, with room to spare
SUITE_VERSIONS = {"trixie": "13", "bookworm": "12", "forky": "14"}


def preflight(s: Settings, tools: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        die(
            "bake needs root (mmdebstrap in root mode, chroot, mounts)",
            hint="run it as root or with sudo",
            status=ExitStatus.USAGE,
        )
    for tool in tools:
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


def bake(
    s: Settings,
    via: str | None = None,
    use_layers: bool = True,
    change_script: str | None = None,
    expect_recipe: str | None = None,
    fresh_base: bool = False,
    pins: dict[str, str] | None = None,
) -> Image:
    """Bake an image for the settings' target. `change_script` (benchmarks only) appends a line to
    that staged script, as an edit to the recipe would. `expect_recipe` (a rebuild to compare,
    `bake --check`): stop before provisioning unless the staged recipe has that hash. `fresh_base`
    (also `bake --check`): a base tree made for this bake, not the cached one. `pins` (package →
    version, from an earlier manifest): apt installs exactly those, or the bake fails naming them."""
    from appliance import targets

    target = targets.get(s)
    provisioner = target.provisioner(via, use_layers=use_layers, fresh_base=fresh_base, pins=pins)
    preflight(s, provisioner.tools)
    cache = Cache(s.dirs.cache)
    with disk_full_is_an_error():
        web = webclient.prepare(s.webclient, cache)
        with tempfile.TemporaryDirectory(dir=s.dirs.cache, prefix="bake-") as tmp_dir:
            work = Path(tmp_dir)
            stage_dir = provision.stage(work / "stage", web.tar, provisioner.extra_ca)
            if change_script:
                with (stage_dir / "provision" / change_script).open("a") as f:
                    f.write(f"# changed for a benchmark at {dt.datetime.now(dt.UTC).isoformat()}\n")
            recipe_hash = provision.layer_keys(provisioner.base_key(), stage_dir)[-1][1]
            if expect_recipe and recipe_hash != expect_recipe:
                die(
                    "the latest image was baked from another recipe than this checkout's",
                    hint="bake this recipe first (`invoke bake`), or check out the commit that baked it",
                    status=ExitStatus.USAGE,
                )
            name = provisioner.image_name(recipe_hash)
            built = provisioner.run(stage_dir, name, work)
            # pip --require-hashes installed exactly the lock, or provisioning failed.
            wheels = sbom.locked_wheels(IMAGES / "lock/synapse.txt")
            recorder = sbom.locked_wheels(IMAGES / "lock/recorder.txt")
            bom = sbom.cyclonedx(
                name, recipe_hash, built.debs, wheels + recorder, web, SUITE_VERSIONS.get(s.image.suite, "?")
            )
            manifest = {
                "target": s.target,
                "recipe_sha256": recipe_hash,
                "base_key": provisioner.base_key(),
                "suite": s.image.suite,
                "debian_archive": built.archive,
                "disk_gb": s.image.disk_gb,
                "webclient": {"name": web.name, "version": web.version, "sha256": web.sha256},
                "debian_packages": {d["name"]: d["version"] for d in built.debs},
                "wheels": {w["name"]: {"version": w["version"], "sha256": w["sha256"]} for w in wheels},
                "recorder_wheels": {w["name"]: {"version": w["version"], "sha256": w["sha256"]} for w in recorder},
            }
            return target.publish(name, built, manifest, bom)
