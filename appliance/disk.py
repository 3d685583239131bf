"""Root tree → BIOS-bootable disk → compressed qcow2, without loop devices or mounts.

One MBR partition at 1 MiB; `mkfs.ext4 -d` fills it straight from the tree; GRUB's core image
(made by the tree's own grub-mkimage, so the boot loader is Debian's and in the SBOM) goes into the
gap before the partition. grub.cfg boots /vmlinuz + /initrd.img, so kernel updates keep booting.

Reproducible: the same tree gives the same bytes. Every time in the file system is clamped to the
recipe's fixed date (`epoch`, base.SOURCE_DATE_EPOCH), its UUID, directory hash seed and the MBR's
disk identifier derive from the image's name, the tree's own mke2fs (e2fsprogs ≥ 1.47.1 honours SOURCE_DATE_EPOCH and
fills the file system in a fixed order; the host's may be older) formats it with the tree's own
mke2fs.conf, and qemu-img writes clusters in order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
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


def clamp_times(tree: Path, epoch: int) -> None:
    """No time in the tree later than `epoch` (the "clamp" of reproducible-builds.org's
    SOURCE_DATE_EPOCH): a file's time says when a bake ran, not what the image holds."""
    for folder, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            path = Path(folder, name)
            st = path.lstat()
            if st.st_mtime > epoch or st.st_atime > epoch:
                os.utime(path, (min(st.st_atime, epoch), min(st.st_mtime, epoch)), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def tree_tool(tree: Path, program: str) -> list[str]:
    """The argv prefix that runs the tree's own `program` on the host, with the tree's own loader
    and libraries: no chroot, so the program reads and writes host paths."""
    loader = tree / "usr/lib64/ld-linux-x86-64.so.2"
    libs = [tree / "usr/lib/x86_64-linux-gnu", tree / "lib/x86_64-linux-gnu"]
    return [str(loader), "--library-path", ":".join(str(p) for p in libs if p.is_dir()), str(tree / program)]


def prepare_boot(tree: Path, fsid: str) -> None:
    """Write fstab, grub.cfg and GRUB's modules into the tree."""
    (tree / "etc/fstab").write_text(FSTAB.format(uuid=fsid))
    grub = tree / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(GRUB_CFG.format(uuid=fsid))
    (grub / "grub.cfg").chmod(0o600)  # GRUB reads it as root; nobody else needs to (lynis FILE-7524)
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


def write_disk(tree: Path, raw: Path, size_gb: int, fsid: str, epoch: int) -> None:
    """Make `raw` a bootable disk image holding `tree`. The tree must have had prepare_boot()."""
    size = size_gb << 30
    core = raw.with_suffix(".core.img")
    make_core_image(tree, fsid, core)
    clamp_times(tree, epoch)
    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(size)
    # The MBR's disk identifier from the file system's UUID: sfdisk would pick a random one.
    table = f"label: dos\nlabel-id: 0x{fsid[:8]}\nstart=2048, type=83, bootable\n"
    run(["sfdisk", "--quiet", raw], input=table.encode(), what="sfdisk")
    # The tree's own mke2fs; a tree without one (the simulator's stock image) gets the host's.
    own = (tree / "usr/sbin/mke2fs").exists()
    run(
        [
            *(tree_tool(tree, "usr/sbin/mke2fs") if own else ["mke2fs"]),
            "-t",
            "ext4",
            "-q",
            "-F",
            "-U",
            fsid,
            "-L",
            "outband-root",
            "-E",
            f"offset={PART_OFFSET},hash_seed={fsid}",
            "-d",
            tree,
            raw,
            f"{(size - PART_OFFSET) >> 10}k",
        ],
        what="mkfs.ext4",
        hint="is there enough free disk space for the image?",
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "MKE2FS_CONFIG": str(tree / "etc/mke2fs.conf" if own else "/etc/mke2fs.conf"),
            "SOURCE_DATE_EPOCH": str(epoch),
            "E2FSPROGS_FAKE_TIME": str(epoch),
        },
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
    # zstd compression: several times faster than qcow2's default zlib at a similar size. No -W:
    # out-of-order writes place clusters in whatever order the coroutines finish (different bytes
    # for the same disk); compression still runs on several coroutines.
    run(
        ["qemu-img", "convert", "-m", "4", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, out],
        what="qemu-img convert",
    )


@contextlib.contextmanager
def mounted_root(qcow2: Path, work: Path) -> Iterator[Path]:
    """An image's root file system as its bytes hold it, read-only: what `bake --check` compares,
    rather than the listing published beside it, which whoever changed the image could change too.
    The partition is copied out as a raw file in `work` and loop-mounted with nothing run from it
    (no journal replay, no devices, setuid or executables). A loop mount rather than debugfs's
    rdump, which drops setuid bits and device nodes."""
    folder = Path(tempfile.mkdtemp(dir=work, prefix="view-"))
    raw, root = folder / "root.raw", folder / "root"
    root.mkdir()
    opts = f"driver=raw,offset={PART_OFFSET},file.driver=qcow2,file.file.filename={qcow2}"
    run(["qemu-img", "convert", "--image-opts", opts, "-O", "raw", raw], what="qemu-img convert (the root partition)")
    run(
        ["mount", "-o", "loop,ro,noload,nosuid,nodev,noexec", raw, root],
        what=f"mount {qcow2.name} read-only",
        hint="this needs root and a free loop device (losetup -f)",
    )
    try:
        yield root
    finally:
        subprocess.run(["umount", root], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
