"""qemu for the local target: acceleration probe, VM start in the background, control over QMP."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from appliance import log, process
from appliance.errors import ExitStatus, die
from appliance.run import require, run
from appliance.wait import REAL, Clock, wait_until

QEMU = "qemu-system-x86_64"
# The probe boots a real Linux kernel with no init: it must reach its panic and exit (-no-reboot)
# in seconds. /dev/kvm opening proves nothing: a nested PVM hypervisor accepts every call, even
# runs real-mode code and GRUB, then spins forever once Linux takes over.
PROBE_TIMEOUT = 10.0


def kvm_works(kernel: Path | None) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or kernel is None or not kernel.exists():
        return False
    with tempfile.NamedTemporaryFile(suffix=".log") as serial:
        argv = [
            require(QEMU),
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=-1 init=/nonexistent",
            "-serial",
            f"file:{serial.name}",
        ]
        try:
            subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return False
        return b"Kernel panic" in Path(serial.name).read_bytes()


def choose_accel(setting: str, kernel: Path | None, cache_dir: Path) -> str:
    """`auto`: KVM only when the probe proves it runs Linux; TCG otherwise, with a warning.

    The probe's answer is kept for the host's current boot (it cannot change without a reboot).
    """
    if setting == "tcg":
        warn_if_slow_tcg()
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    memo = cache_dir / f"kvm-probe-{boot_id}"
    if memo.exists():
        works = memo.read_text().strip() == "yes"
    else:
        works = kvm_works(kernel)
        cache_dir.mkdir(parents=True, exist_ok=True)
        memo.write_text("yes\n" if works else "no\n")
    if setting == "kvm" and not works:
        die("KVM does not run guests on this machine", hint="use --accel tcg (or auto)", status=ExitStatus.USAGE)
    if not works:
        log.warn("KVM cannot run a guest here: using TCG emulation (slower)")
        warn_if_slow_tcg()
        return "tcg"
    return "kvm"


# Under TCG, qemu 7.2 (Debian 12's) translates a shared library's code again for every process
# that maps it at other addresses, which address-space randomisation makes every process: in the
# guest, 200 runs of /bin/true took 9 s, 2.6 s without randomisation (setarch -R), 3.4 s on qemu
# 10 with it; an A/B launch + verify took ~11 s longer on 7.2. From 8.0 qemu keys x86 translations
# by physical address (CF_PCREL).
FAST_TCG_SINCE = (8, 0)


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) from `qemu --version`: "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)"."""
    words = text.split()
    number = words[words.index("version") + 1] if "version" in words else "0.0"
    major, minor = [*number.split("."), "0"][:2]
    return int(major), int(minor)


@functools.cache
def version() -> tuple[int, int]:
    """The installed qemu's (major, minor), asked once per process."""
    return parse_version(run([QEMU, "--version"], what="qemu --version", capture=True))


def warn_if_slow_tcg() -> None:
    found = version()
    if found < FAST_TCG_SINCE:
        log.warn(
            f"qemu {found[0]}.{found[1]} emulates every new process's code anew (launches take longer): "
            "qemu ≥ 8 is faster (Debian 12: bookworm-backports; scripts/install-deps installs it)"
        )


def accel_args(accel: str, cpus: int) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host", "-smp", str(cpus)]
    # Multi-threaded TCG: one host thread per vCPU.
    return ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max", "-smp", str(cpus)]


@dataclass(frozen=True)
class Forward:
    proto: str  # tcp | udp
    host_port: int
    guest_port: int


def netdev_arg(address: str, forwards: list[Forward]) -> str:
    """User-mode networking; every forward listens on the appliance's own loopback address only."""
    rules = [f"hostfwd={f.proto}:{address}:{f.host_port}-:{f.guest_port}" for f in forwards]
    return ",".join(["user,id=net0", *rules])


def overlay(image: Path, path: Path) -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.resolve(), path], what="qemu-img create")
    path.chmod(0o600)  # the appliance's disk: as private as the rest of its state
    return path


# Direct boot of the image's own kernel (exported next to the image at bake), root on NVMe, no
# initramfs. Why: under emulation firmware, GRUB and the initramfs (its udev, its module loading)
# cost ~10 s of every launch, and Debian's cloud kernel has NVMe and ext4 built in, so it mounts
# the root itself. The image keeps GRUB and its initramfs for every other way of booting it.
KERNEL_CMDLINE = [
    "root=/dev/nvme0n1p1",  # the only NVMe disk: the root disk (see argv)
    "rootfstype=ext4",
    # Mounted read-write by the kernel with fstab's options, and fstab left unread: no fsck and no
    # remount units, which are the first ~3 s of the boot's critical path under emulation (both
    # run before cloud-init may start). A fresh overlay of a sealed, cleanly made file system has
    # nothing for fsck to find; ext4 still replays its journal after a crash. The image's fstab
    # holds only this root line (appliance/disk.py) and stays in force for a GRUB boot.
    "rw",
    "rootflags=discard,errors=remount-ro",
    "fstab=no",
    "console=ttyS0,115200n8",
    "net.ifnames=0",
    "quiet",
    # Reboot at once on a panic instead of hanging until the launch times out. Seen here under
    # multi-threaded TCG: an early-boot "Oops: int3" while the kernel patches its own code on one
    # vCPU as the other runs it (an emulation race); the next boot goes through.
    "panic=1",
    # The kernel's LSMs without "bpf": with it, PID 1 loads and attaches a BPF LSM program at every
    # boot (RestrictFileSystems=, which no unit here uses), ~0.4 s of the emulated boot before
    # any unit may start. AppArmor, Yama, Landlock and lockdown stay (Debian 13's list otherwise).
    "lsm=lockdown,capability,landlock,yama,apparmor,tomoyo,ipe,ima,evm",
]
# cloud-init's generator runs before any disk is probed: name its datasource. The image's local
# stage then waits for the seed CD itself, without udev (images/files/usr/local/lib/outband/
# wait-for-seed says why).
SEED_CMDLINE = ["ds=nocloud"]
# A launch's seed holds a launch contract (a bare boot's does not): Synapse's unit starts at the
# beginning of the boot and imports Synapse while cloud-init runs (images/files/etc/systemd/system/
# synapse.service); the contract itself is read only later, by cloud-init and first boot.
CONTRACT_CMDLINE = "outband.contract=seed"


@dataclass(frozen=True)
class VmSpec:
    name: str
    disk: Path
    seed: Path | None
    address: str
    forwards: list[Forward]
    accel: str
    cpus: int
    memory_mb: int
    qmp: Path
    serial_log: Path
    pidfile: Path
    kernel: Path | None = None  # the image's kernel: direct boot (fast); None: firmware and GRUB
    contract: bool = False  # the seed carries a launch contract (not a bare boot)
    # The local target's segment between appliances (appliance/localnet.py): ("group:port", MAC).
    segment: tuple[str, str] | None = None


def argv(spec: VmSpec) -> list[str]:
    args = [
        QEMU,
        "-name",
        f"outband-{spec.name}",
        "-machine",
        "q35",
        *accel_args(spec.accel, spec.cpus),
        "-m",
        str(spec.memory_mb),
        "-nodefaults",
        "-display",
        "none",
        "-no-user-config",
        "-serial",
        f"file:{spec.serial_log}",
        "-qmp",
        f"unix:{spec.qmp},server=on,wait=off",
        "-pidfile",
        str(spec.pidfile),
        # Guest entropy from the host: sshd, Synapse and certbot never wait for the pool.
        "-object",
        "rng-random,filename=/dev/urandom,id=rng0",
        "-device",
        "virtio-rng-pci,rng=rng0",
        "-netdev",
        netdev_arg(spec.address, spec.forwards),
        "-device",
        "virtio-net-pci,netdev=net0",
    ]
    if spec.segment is not None:
        mcast, mac = spec.segment
        args += [
            "-netdev",
            f"socket,id=net1,mcast={mcast},localaddr=127.0.0.1",
            "-device",
            f"virtio-net-pci,netdev=net1,mac={mac}",
        ]
    disk = f"file={spec.disk},format=qcow2,discard=unmap,cache=writeback"
    if spec.kernel is not None:
        cmdline = list(KERNEL_CMDLINE)
        if spec.seed is not None:
            cmdline += SEED_CMDLINE + ([CONTRACT_CMDLINE] if spec.contract else [])
        args += ["-drive", f"{disk},if=none,id=root", "-device", "nvme,drive=root,serial=outband-root"]
        args += ["-kernel", str(spec.kernel), "-append", " ".join(cmdline)]
    else:
        args += ["-drive", f"{disk},if=virtio"]
    if spec.seed is not None:
        args += [
            "-drive",
            f"file={spec.seed},format=raw,if=none,id=seed,media=cdrom,readonly=on",
            "-device",
            "ide-cd,drive=seed,id=seedcd",
        ]
    return args


def start(spec: VmSpec, log_file: Path) -> int:
    """Start qemu detached (appliance.process: Ctrl-C here must not kill it mid-cleanup), its
    serial log, PID file and QMP socket private like the rest of the state (umask 077)."""
    require(QEMU)
    proc = process.spawn(argv(spec), log_file, umask=0o077)

    # qemu fails fast on a taken port or a bad argument: catch that here, with its message.
    def started() -> bool:
        if proc.poll() is not None:
            message = log_file.read_text().strip().splitlines()
            die(
                f"qemu exited at once: {message[-1] if message else proc.returncode}",
                hint="is an address or port already taken? see " + str(log_file),
            )
        return spec.qmp.exists()

    wait_until(started, timeout=30, interval=0.1, what="qemu's control socket", hint=f"see {log_file}")
    return proc.pid


def qmp(spec_qmp: Path, command: str, **arguments: object) -> object:
    client = QEMUMonitorProtocol(str(spec_qmp))
    try:
        client.connect()
        return client.cmd(command, **arguments) if arguments else client.cmd(command)
    finally:
        client.close()


def eject_seed(qmp_socket: Path) -> None:
    """Take the seed (it holds the user-data) out of the virtual drive, so its file can go."""
    qmp(qmp_socket, "eject", id="seedcd", force=True)


def alive(pid: int) -> bool:
    return process.alive(pid, QEMU)


def shutdown(pid: int, qmp_socket: Path, timeout: float, clock: Clock = REAL) -> bool:
    """The ACPI power button (the guest shuts down cleanly and qemu exits), waited for up to
    `timeout`; then quit. True when the guest powered off by itself."""
    if alive(pid) and qmp_socket.exists():
        try:
            qmp(qmp_socket, "system_powerdown")
        except Exception as e:  # no QMP: the hard way below
            log.detail(f"QMP system_powerdown failed: {e}")
    deadline = clock.now() + timeout
    while alive(pid) and clock.now() < deadline:
        clock.sleep(0.5)
    clean = not alive(pid)
    stop(pid, qmp_socket)
    return clean


def check_disk(disk: Path) -> None:
    """A qcow2's own consistency check (`qemu-img check`): a damaged disk is not booted."""
    result = subprocess.run(["qemu-img", "check", "-q", str(disk)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        die(
            f"the disk {disk} is damaged: {last[-1] if last else result.returncode}",
            hint="its data cannot be trusted; `invoke destroy` the appliance",
            status=ExitStatus.ERROR,
        )


def stop(pid: int, qmp_socket: Path | None, timeout: float = 5.0) -> None:
    """Quit the VM (a disposable appliance needs no clean shutdown); SIGKILL our own PID if it hangs."""
    if not alive(pid):
        return
    if qmp_socket is not None and qmp_socket.exists():
        try:
            qmp(qmp_socket, "quit")
        except Exception as e:  # any QMP failure falls through to the signal below
            log.detail(f"QMP quit failed: {e}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    process.kill(pid, QEMU)
