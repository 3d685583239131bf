"""The swappable step of the one bake pipeline (appliance/bake.py): how the staged recipe is run.

- Chroot: the provision scripts in a copy of the local base tree (native speed, layer cache),
  then the tree becomes a bootable disk. The local target's default.
- PackerQemu: Packer's qemu source boots the local base disk and runs the same scripts over SSH
  on a live system, then the VM's disk is the image (`--via packer`).
- PackerDigitalOcean: Packer's digitalocean source does the same on a droplet made from
  DigitalOcean's stock image and leaves a snapshot (the digitalocean target).

Each returns what the pipeline needs to write the manifest, the SBOM and the image reference.
"""

from __future__ import annotations

import abc
import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from appliance import base, content, disk, log, packer, provision, qemu, sbom, secrets
from appliance.cache import Cache
from appliance.config import IMAGES, Settings
from appliance.errors import die
from appliance.state import write_private


@dataclass(frozen=True)
class Built:
    debs: list[dict[str, str]]
    archive: dict[str, str]  # each Debian suite's Release date, as the bake read it
    qcow2: Path | None = None  # a local image
    kernel: Path | None = None  # its kernel, for a direct boot
    snapshot_name: str | None = None  # a cloud snapshot
    content: bytes | None = None  # the image's content listing (appliance/content.py), local disks only


@dataclass
class Provisioner(abc.ABC):
    s: Settings
    cache: Cache
    name_suffix: str = ""
    tools: tuple[str, ...] = ()
    extra_ca: tuple[Path, ...] = field(default_factory=tuple)

    def base_key(self) -> str:
        return base.key(self.s)

    def image_name(self, recipe_hash: str) -> str:
        return f"outband-{self.s.image.suite}-{recipe_hash[:12]}{self.name_suffix}"

    @abc.abstractmethod
    def run(self, stage_dir: Path, name: str, work: Path) -> Built:
        """Provision the staged recipe; `work` is this bake's own temporary directory."""


class Chroot(Provisioner):
    def __init__(
        self,
        s: Settings,
        cache: Cache,
        use_layers: bool = True,
        fresh_base: bool = False,
        pins: dict[str, str] | None = None,
    ):
        super().__init__(s, cache, tools=("mmdebstrap", "qemu-img", "sfdisk", "chroot", "mount"))
        self.extra_ca = s.image.extra_ca
        self.use_layers = use_layers
        self.pins = pins
        self.fresh_base = fresh_base or bool(pins)  # a pinned base is made for its bake

    def run(self, stage_dir: Path, name: str, work: Path) -> Built:
        s, cache = self.s, self.cache
        archive = base.archive_state(s)
        fresh = self.fresh_base
        base_tree = base.build(s, work / "base", work, self.pins) if fresh else base.ensure(s, cache, archive)
        tree = provision.provision_tree(
            base_tree, self.base_key(), stage_dir, work / "root", cache, archive, self.use_layers, bool(self.pins)
        )
        with log.step("Packages in the image"):
            debs = sbom.debian_packages(tree)
            if self.pins:
                base.check_pins({d["name"]: d["version"] for d in debs}, self.pins, "image")
            for lock, venv in sbom.VENVS.items():
                installed = sbom.installed_wheels(tree, venv)
                wheels = sbom.locked_wheels(IMAGES / f"lock/{lock}.txt")
                missing = [w["name"] for w in wheels if installed.get(w["name"].replace("_", "-")) != w["version"]]
                if missing:
                    die(
                        f"/{venv} does not match lock/{lock}.txt for: {', '.join(missing)}",
                        hint="run `invoke lock` and bake again",
                    )
        with log.step(f"Disk image ({s.image.disk_gb} GiB, BIOS/GRUB) → compressed qcow2"):
            fsid = disk.fs_uuid(name)
            disk.prepare_boot(tree, fsid)
            # The image's kernel, kept beside it: launches boot it directly (appliance.qemu).
            shutil.copyfile((tree / "vmlinuz").resolve(), work / "vmlinuz")
            disk.write_disk(tree, work / "disk.raw", s.image.disk_gb, fsid, int(base.SOURCE_DATE_EPOCH))
            disk.to_qcow2(work / "disk.raw", work / "image.qcow2")
        with log.step("Content listing (a hash of every file)"):
            listing = content.dump(content.listing(tree))
        return Built(debs, archive, qcow2=work / "image.qcow2", kernel=work / "vmlinuz", content=listing)


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
        disk.write_disk(tree, Path(tmp) / "disk.raw", s.image.disk_gb, fsid, int(base.SOURCE_DATE_EPOCH))
        out = cache.tmp(final)
        disk.to_qcow2(Path(tmp) / "disk.raw", out)
        cache.prune("base-disk", keep=set())
        return cache.commit(out, final)


class PackerQemu(Provisioner):
    """The live-system path, here: Packer's qemu source boots the base disk, provisions over SSH."""

    def __init__(self, s: Settings, cache: Cache):
        super().__init__(s, cache, name_suffix="-packer", tools=("packer", "qemu-img", "mkfs.ext4", "sfdisk"))
        self.extra_ca = s.image.extra_ca

    def run(self, stage_dir: Path, name: str, work: Path) -> Built:
        s, cache = self.s, self.cache
        archive = base.archive_state(s)  # the build VM's apt reads the archive itself; also for the manifest
        base_tree = base.ensure(s, cache, archive)
        disk_path = base_disk(s, cache, base_tree, self.base_key())
        key = secrets.ssh_keypair("outband-build")
        write_private(work / "build_ed25519", key.private_openssh)
        http = work / "http"
        http.mkdir()
        # NoCloud over HTTP (smbios serial): the build VM's only login is root with this one-off
        # key (the base's cloud-init lets root in with the datasource's keys, like a cloud's
        # stock image); the seal removes it.
        (http / "user-data").write_text("#cloud-config\nssh_authorized_keys:\n  - " + key.public_openssh + "\n")
        (http / "meta-data").write_text(f"instance-id: {name}-build\nlocal-hostname: outband-build\n")
        kernel = (base_tree / "vmlinuz").resolve()
        variables = {
            "stage_dir": str(stage_dir),
            "facts_out": str(work / "facts.tsv"),
            # The provisioned VM's own kernel (10-packages may have upgraded it): the local target
            # boots it directly, with this image's modules.
            "kernel_out": str(work / "vmlinuz"),
            "base_disk": str(disk_path),
            "http_dir": str(http),
            "ssh_private_key_file": str(work / "build_ed25519"),
            "accelerator": qemu.choose_accel(s.vm.accel, kernel, s.dirs.cache),
            "cpus": str(s.vm.cpus),
            "memory": str(s.vm.memory_mb),
            "output_dir": str(work / "out"),
            "vm_name": "outband.qcow2",
            "serial_log": str(s.dirs.output / "logs" / f"{name}-serial.log"),
            "source_date_epoch": base.SOURCE_DATE_EPOCH,
        }
        with log.step("Packer: validate the template"):
            packer.validate(variables, only="qemu")
        with log.step("Packer qemu source: boot the base disk, provision over SSH, seal"):
            packer.build(variables, only="qemu")
        with log.step("Compressed qcow2"):
            disk.to_qcow2(work / "out/outband.qcow2", work / "image.qcow2")
        # The tree stayed in the build VM: the listing comes from the finished disk, mounted read-only.
        with log.step("Content listing (a hash of every file)"), disk.mounted_root(work / "image.qcow2", work) as root:
            listing = content.dump(content.listing_of_disk(root))
        debs = sbom.parse_dpkg((work / "facts.tsv").read_text())
        return Built(debs, archive, work / "image.qcow2", work / "vmlinuz", content=listing)


class PackerDigitalOcean(Provisioner):
    """Packer's digitalocean source: a droplet from the stock image, the same scripts, a snapshot.

    The token travels in packer's environment (DIGITALOCEAN_TOKEN), never on a command line, in a
    log or in the state. Build-time extra CAs only when configured (digitalocean.build_extra_ca):
    the build runs in DigitalOcean, not behind this machine's proxy."""

    def __init__(self, s: Settings, cache: Cache, token: str):
        super().__init__(s, cache, tools=("packer",))
        self.extra_ca = s.do.build_extra_ca
        self.token = token

    def base_key(self) -> str:
        return f"digitalocean:{self.s.do.base_image}"

    def image_name(self, recipe_hash: str) -> str:
        # Snapshots are never replaced: the time tells two bakes of one recipe apart.
        return f"outband-{self.s.image.suite}-{recipe_hash[:12]}-{dt.datetime.now(dt.UTC):%Y%m%d%H%M}"

    def variables(self, stage_dir: Path, facts: Path, name: str) -> dict[str, str]:
        s = self.s
        return {
            "stage_dir": str(stage_dir),
            "facts_out": str(facts),
            "snapshot_name": name,
            "do_region": s.do.region,
            "do_size": s.do.size,
            "do_base_image": s.do.base_image,
            "do_api_url": s.do.api_url,
            "source_date_epoch": base.SOURCE_DATE_EPOCH,
        }

    def run(self, stage_dir: Path, name: str, work: Path) -> Built:
        s = self.s
        variables = self.variables(stage_dir, work / "facts.tsv", name)
        env = {"DIGITALOCEAN_TOKEN": self.token}
        if s.do.ca_bundle:
            # Packer (Go) trusts the system's CAs or SSL_CERT_FILE's, not both: give it both.
            bundle = work / "api-cas.pem"
            bundle.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text() + Path(s.do.ca_bundle).read_text())
            env["SSL_CERT_FILE"] = str(bundle)
        with log.step("Packer: validate the digitalocean source"):
            packer.validate(variables, only="digitalocean", env=env)
        with log.step(f"Packer digitalocean source: droplet → provision → seal → snapshot {name}"):
            packer.build(variables, only="digitalocean", env=env)
        # The build VM's apt read Debian's archive itself: its state is the bake's time.
        archive = {"read": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        return Built(sbom.parse_dpkg((work / "facts.tsv").read_text()), archive, snapshot_name=name)
