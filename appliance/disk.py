"""Root tree → BIOS-bootable disk → compressed qcow2, without loop devices or mounts.

One MBR partition at 1 MiB; `mkfs.ext4 -d` fills it straight from the tree; GRUB's core image
(made by the tree's own grub-mkimage, so the boot loader is Debian's and in the SBOM) goes into the
gap before the partition. grub.cfg boots /vmlinuz + /initrd.img, so kernel updates keep booting.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from appliance.run import run

PART_OFFSET = 1 << 20  # 1 MiB: partition start, room for GRUB's core image
GRUB_MODULES = [
    "biosdisk",
    "part_msdos",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "configfile",
    "serial",
    "terminal",
    "echo",
    "test",
]

GRUB_CFG = """\
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --fs-uuid --set=root {uuid}
linux /vmlinuz root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 quiet
initrd /initrd.img
boot
"""

# Without the prefix GRUB stops at a `grub>` prompt: it must find its config on the partition.
EARLY_CFG = "search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"

# The local target's direct boot does not read it: it passes these options as rootflags (qemu.py).
FSTAB = "UUID={uuid} / ext4 defaults,discard,errors=remount-ro 0 1\n"


def fs_uuid(seed: str) -> str:
    """A stable file-system UUID derived from the image's inputs (reproducible images)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"outband:{seed}"))


def prepare_boot(tree: Path, fsid: str) -> None:
    """Write fstab, grub.cfg and GRUB's modules into the tree."""
    (tree / "etc/fstab").write_text(FSTAB.format(uuid=fsid))
    grub = tree / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(GRUB_CFG.format(uuid=fsid))
    modules = grub / "i386-pc"
    if modules.exists():
        shutil.rmtree(modules)
    shutil.copytree(tree / "usr/lib/grub/i386-pc", modules)


def make_core_image(tree: Path, fsid: str, out: Path) -> None:
    work = tree / "tmp/outband-grub"
    work.mkdir(parents=True, exist_ok=True)
    try:
        (work / "early.cfg").write_text(EARLY_CFG.format(uuid=fsid))
        # Paths inside the chroot, in a directory only this build uses.
        run(
            [
                "chroot",
                tree,
                "grub-mkimage",
                "-O",
                "i386-pc",
                "-d",
                "/usr/lib/grub/i386-pc",
                "-c",
                "/tmp/outband-grub/early.cfg",
                "-p",
                "/boot/grub",
                "-o",
                "/tmp/outband-grub/core.img",
                *GRUB_MODULES,
            ],
            what="grub-mkimage",
        )
        shutil.copyfile(work / "core.img", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_disk(tree: Path, raw: Path, size_gb: int, fsid: str) -> None:
    """Make `raw` a bootable disk image holding `tree`. The tree must have had prepare_boot()."""
    size = size_gb << 30
    core = raw.with_suffix(".core.img")
    make_core_image(tree, fsid, core)
    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(size)
    run(["sfdisk", "--quiet", raw], input=b"label: dos\nstart=2048, type=83, bootable\n", what="sfdisk")
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-U",
            fsid,
            "-L",
            "outband-root",
            "-E",
            f"offset={PART_OFFSET}",
            "-d",
            tree,
            raw,
            f"{(size - PART_OFFSET) >> 10}k",
        ],
        what="mkfs.ext4",
        hint="is there enough free disk space for the image?",
    )
    boot_img = (tree / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    core_img = core.read_bytes()
    if len(core_img) > PART_OFFSET - 512:
        raise RuntimeError("GRUB core image does not fit before the partition")
    fd = os.open(raw, os.O_WRONLY)
    try:
        os.pwrite(fd, boot_img[:440], 0)  # boot code only: keep the partition table
        os.pwrite(fd, core_img, 512)
    finally:
        os.close(fd)
    core.unlink()


def to_qcow2(raw: Path, out: Path) -> None:
    # zstd compression: several times faster than qcow2's default zlib at a similar size.
    run(
        ["qemu-img", "convert", "-W", "-m", "4", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, out],
        what="qemu-img convert",
    )
