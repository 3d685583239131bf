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


def bake(s: Settings, use_layers: bool = True, via: str = "chroot", change_script: str | None = None) -> Image:
    """Bake an image. `change_script` (benchmarks only) appends a line to that staged script."""
    if s.target == "digitalocean":
        return bake_digitalocean(s)
    if via not in ("chroot", "packer"):
        die(f"--via must be chroot or packer, not {via!r}", hint="chroot is the fast default", status=ExitStatus.USAGE)
    preflight(s)
    if via == "packer":
        return bake_with_packer(s)
    cache = Cache(s.dirs.cache)
    with disk_full_is_an_error():
        web = webclient.prepare(s.webclient, cache)
        base_tree = base.ensure(s, cache)
        base_key = base.key(s)
        with tempfile.TemporaryDirectory(dir=s.dirs.cache, prefix="bake-") as tmp_dir:
            tmp = Path(tmp_dir)
            stage_dir = provision.stage(tmp / "stage", web.tar, s.image.extra_ca)
            if change_script:
                with (stage_dir / "provision" / change_script).open("a") as f:
                    f.write(f"# changed for a benchmark at {dt.datetime.now(dt.UTC).isoformat()}\n")
            recipe_hash = provision.layer_keys(base_key, stage_dir)[-1][1]
            name = f"outband-{s.image.suite}-{recipe_hash[:12]}"
            archive = base.archive_state(s)
            tree = provision.provision_tree(base_tree, base_key, stage_dir, tmp / "root", cache, archive, use_layers)
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
            return publish(
                s, name, recipe_hash, base_key, archive, web, bom, debs, wheels, tmp / "image.qcow2", tmp / "vmlinuz"
            )


def publish(
    s: Settings,
    name: str,
    recipe_hash: str,
    base_key: str,
    archive: dict[str, str],
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
        "debian_archive": archive,  # each suite's Release date as the bake read it
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


def base_disk(s: Settings, cache: Cache, base_tree: Path, base_key: str) -> Path:
    """The base tree as a bootable qcow2: what Packer's qemu source boots (cached with the base)."""
    final = cache.path("base-disk", base_key, ".qcow2")
    if final.exists() and final.stat().st_mtime >= base_tree.stat().st_mtime:
        return final
    with log.step("Base disk for Packer"), tempfile.TemporaryDirectory(dir=cache.root, prefix="basedisk-") as tmp:
        tree = Path(tmp) / "root"
        provision.copy_tree(base_tree, tree)
        fsid = disk.fs_uuid(base_key)
        disk.prepare_boot(tree, fsid)
        disk.write_disk(tree, Path(tmp) / "disk.raw", s.image.disk_gb, fsid)
        out = cache.tmp(final)
        disk.to_qcow2(Path(tmp) / "disk.raw", out)
        cache.prune("base-disk", keep=set())
        return cache.commit(out, final)


def bake_with_packer(s: Settings) -> Image:
    """The live-system path: Packer's qemu source boots the base disk and runs the same scripts over SSH."""
    from appliance import packer, qemu, secrets
    from appliance.state import write_private

    require("packer")
    cache = Cache(s.dirs.cache)
    with disk_full_is_an_error():
        web = webclient.prepare(s.webclient, cache)
        base_tree = base.ensure(s, cache)
        base_key = base.key(s)
        disk_path = base_disk(s, cache, base_tree, base_key)
        with tempfile.TemporaryDirectory(dir=s.dirs.cache, prefix="packer-") as tmp_dir:
            tmp = Path(tmp_dir)
            stage_dir = provision.stage(tmp / "stage", web.tar, s.image.extra_ca)
            recipe_hash = provision.layer_keys(base_key, stage_dir)[-1][1]
            archive = base.archive_state(s)  # for the manifest: the build VM's apt reads the archive itself
            name = f"outband-{s.image.suite}-{recipe_hash[:12]}-packer"
            key = secrets.ssh_keypair("outband-build")
            write_private(tmp / "build_ed25519", key.private_openssh)
            http = tmp / "http"
            http.mkdir()
            # NoCloud over HTTP (smbios serial): the build VM's only login is this one-off key.
            (http / "user-data").write_text(
                "#cloud-config\nssh_authorized_keys:\n  - " + key.public_openssh + "\nssh_genkeytypes: [ed25519]\n"
            )
            (http / "meta-data").write_text(f"instance-id: {name}-build\nlocal-hostname: outband-build\n")
            kernel = (base_tree / "vmlinuz").resolve()
            variables = {
                "stage_dir": str(stage_dir),
                "facts_out": str(tmp / "facts.tsv"),
                # The provisioned VM's own kernel (10-packages may have upgraded it): the local
                # target boots it directly, with this image's modules.
                "kernel_out": str(tmp / "vmlinuz"),
                "base_disk": str(disk_path),
                "http_dir": str(http),
                "ssh_private_key_file": str(tmp / "build_ed25519"),
                "accelerator": qemu.choose_accel(s.vm.accel, kernel, s.dirs.cache),
                "cpus": str(s.vm.cpus),
                "memory": str(s.vm.memory_mb),
                "output_dir": str(tmp / "out"),
                "vm_name": "outband.qcow2",
                "serial_log": str(s.dirs.output / "logs" / f"{name}-serial.log"),
            }
            with log.step("Packer: validate the template"):
                packer.validate(variables, only="qemu")
            with log.step("Packer qemu source: boot the base disk, provision over SSH, seal"):
                packer.build(variables, only="qemu")
            with log.step("Manifest, SBOM and compressed qcow2"):
                debs = sbom.parse_dpkg((tmp / "facts.tsv").read_text())
                # pip --require-hashes installed exactly the lock, or the build failed.
                wheels = sbom.locked_wheels(IMAGES / "lock/synapse.txt")
                bom = sbom.cyclonedx(name, recipe_hash, debs, wheels, web, SUITE_VERSIONS.get(s.image.suite, "?"))
                disk.to_qcow2(tmp / "out/outband.qcow2", tmp / "image.qcow2")
            return publish(
                s, name, recipe_hash, base_key, archive, web, bom, debs, wheels, tmp / "image.qcow2", tmp / "vmlinuz"
            )


def packer_variables_digitalocean(s: Settings, stage_dir: Path, facts: Path, snapshot_name: str) -> dict[str, str]:
    return {
        "stage_dir": str(stage_dir),
        "facts_out": str(facts),
        "snapshot_name": snapshot_name,
        "do_region": s.do.region,
        "do_size": s.do.size,
        "do_base_image": s.do.base_image,
    }


def bake_digitalocean(s: Settings) -> Image:
    """Packer's digitalocean source: a droplet from debian-13-x64, the same scripts and seal, a snapshot.

    The snapshot name carries the recipe hash. The token comes from DIGITALOCEAN_TOKEN, which packer
    reads from its environment: it is never on a command line, in a log or in the state.
    """
    from appliance import packer

    if not os.environ.get("DIGITALOCEAN_TOKEN"):
        die("DIGITALOCEAN_TOKEN is not set", hint="export a DigitalOcean API token", status=ExitStatus.USAGE)
    cache = Cache(s.dirs.cache)
    web = webclient.prepare(s.webclient, cache)
    with tempfile.TemporaryDirectory(dir=cache.root, prefix="do-bake-") as tmp_dir:
        tmp = Path(tmp_dir)
        # The build runs in DigitalOcean: no builder-side proxy CA belongs there.
        stage_dir = provision.stage(tmp / "stage", web.tar, ())
        recipe_hash = provision.layer_keys(f"digitalocean:{s.do.base_image}", stage_dir)[-1][1]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M")
        name = f"outband-{s.image.suite}-{recipe_hash[:12]}-{stamp}"
        variables = packer_variables_digitalocean(s, stage_dir, tmp / "facts.tsv", name)
        with log.step("Packer: validate the digitalocean source"):
            packer.validate(variables, only="digitalocean")
        with log.step(f"Packer digitalocean source: droplet → provision → seal → snapshot {name}"):
            packer.build(variables, only="digitalocean")
        debs = sbom.parse_dpkg((tmp / "facts.tsv").read_text())
        wheels = sbom.locked_wheels(IMAGES / "lock/synapse.txt")
        bom = sbom.cyclonedx(name, recipe_hash, debs, wheels, web, SUITE_VERSIONS.get(s.image.suite, "?"))
        out = images_dir(s)
        out.mkdir(parents=True, exist_ok=True)
        sbom_path = out / f"{name}.sbom.json"
        sbom.write_json(sbom_path, bom)
        manifest = out / f"{name}.manifest.json"
        sbom.write_json(
            manifest,
            {
                "name": name,
                "target": "digitalocean",
                "recipe_sha256": recipe_hash,
                "snapshot_name": name,
                "debian_packages": {d["name"]: d["version"] for d in debs},
                "sbom": sbom_path.name,
            },
        )
        return Image(name, manifest, manifest, sbom_path, 0)
