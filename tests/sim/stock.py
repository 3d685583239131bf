"""The simulator's stand-in for DigitalOcean's stock `debian-13-x64` image, made from Debian packages.

Like Outband's own base it comes from mmdebstrap (never a downloaded image); unlike it, it has none
of Outband's extras: no `outband` user, no systemd-networkd or -resolved, no Outband cloud-init
settings. It is what Packer's digitalocean builder boots before the recipe's scripts run. Cached by
its inputs (packages, cloud-init settings, customize hook, Debian suite, the simulated web CA).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

from appliance import base, disk, log
from appliance.cache import Cache, digest
from appliance.config import Settings
from appliance.run import run
from appliance.state import private_dir, write_private

HERE = Path(__file__).resolve().parent / "stock"
DISK_GB = 4


@dataclass(frozen=True)
class Stock:
    image: Path  # qcow2, BIOS/GRUB bootable
    kernel: Path  # its kernel, for the KVM probe only
    web_ca: trustme.CA  # the simulated internet's public CA, trusted by the image


def web_ca(cache: Cache) -> trustme.CA:
    """The simulated web PKI's root: made once, kept with the cache (its key signs simulated
    services' certificates; it is a test CA, 0600, never in an Outband image)."""
    folder = private_dir(cache.root / "sim-web-ca")
    cert, key = folder / "ca.pem", folder / "ca.key"
    if not cert.exists() or not key.exists():
        ca = trustme.CA(organization_name="Outband simulated web PKI")
        write_private(key, ca.private_key_pem.bytes())
        write_private(cert, ca.cert_pem.bytes())
    return trustme.CA.from_pem(cert.read_bytes(), key.read_bytes())


def ensure(s: Settings, cache: Cache) -> Stock:
    ca = web_ca(cache)
    packages = [line.split("#")[0].strip() for line in (HERE / "packages.txt").read_text().splitlines()]
    packages = [p for p in packages if p]
    key = digest("sim-stock-v1", s.image.suite, base.mirrors(s), base.SOURCE_DATE_EPOCH, HERE, ca.cert_pem.bytes())
    image = cache.path("sim-stock", key, ".qcow2")
    kernel = cache.path("sim-stock", key, ".vmlinuz")
    if image.exists() and kernel.exists():
        return Stock(image, kernel, ca)
    with (
        log.step("Simulator: DigitalOcean-like stock image from Debian packages"),
        tempfile.TemporaryDirectory(dir=cache.root, prefix="sim-stock-") as tmp_dir,
    ):
        tmp = Path(tmp_dir)
        tree = tmp / "root"
        (tmp / "web-ca.pem").write_bytes(ca.cert_pem.bytes())
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=directory",
                "--include=" + ",".join(packages),
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                f'--customize-hook={HERE / "customize.sh"} "$1"',
                s.image.suite,
                str(tree),
                *base.mirrors(s),
            ],
            what="mmdebstrap (simulator's stock image)",
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "SOURCE_DATE_EPOCH": base.SOURCE_DATE_EPOCH,
                "TMPDIR": str(cache.root),
                "OUTBAND_SIM_PUBLIC_CA": str(tmp / "web-ca.pem"),
            },
        )
        fsid = disk.fs_uuid(key)
        disk.prepare_boot(tree, fsid)
        shutil.copyfile((tree / "vmlinuz").resolve(), tmp / "vmlinuz")
        disk.write_disk(tree, tmp / "disk.raw", DISK_GB, fsid, int(base.SOURCE_DATE_EPOCH))
        disk.to_qcow2(tmp / "disk.raw", tmp / "image.qcow2")
        cache.prune("sim-stock", keep=set())
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp / "vmlinuz", kernel)
        shutil.move(tmp / "image.qcow2", image)
    return Stock(image, kernel, ca)
