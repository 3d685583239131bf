"""Run provision scripts inside a root tree: the bake's fast path (native speed, no VM).

diskimage-builder style: the kernel file systems are mounted for the duration, and every mount
is undone even when a script fails or the build is interrupted.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from appliance import log

# Mounted in this order, unmounted in reverse.
_MOUNTS = [
    ("proc", "proc", ["-t", "proc"]),
    ("sys", "sysfs", ["-t", "sysfs", "-o", "ro"]),
    ("dev", "/dev", ["--bind"]),
    ("dev/pts", "/dev/pts", ["--bind"]),
    ("run", "tmpfs", ["-t", "tmpfs", "-o", "mode=0755,nosuid,nodev"]),
]


@contextlib.contextmanager
def mounted(root: Path, binds: dict[str, Path] | None = None) -> Iterator[Path]:
    """Mount /proc, /sys, /dev, /run (and extra read-write binds: path in tree → host dir)."""
    done: list[Path] = []
    try:
        for target, source, opts in _MOUNTS:
            where = root / target
            where.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *opts, source, str(where)], check=True)
            done.append(where)
        for target, source in (binds or {}).items():
            where = root / target.lstrip("/")
            where.mkdir(parents=True, exist_ok=True)
            source.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(source), str(where)], check=True)
            done.append(where)
        yield root
    finally:
        for where in reversed(done):
            # Lazy: a daemon a package started despite policy-rc.d must not wedge the cleanup.
            result = subprocess.run(["umount", "--lazy", str(where)], capture_output=True, check=False)
            if result.returncode != 0:
                log.warn(f"could not unmount {where}: {result.stderr.decode().strip()}")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for commands in the tree: nothing of the host's leaks in (PIP_*, proxies…)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env.update(extra or {})
    return env


def use_host_resolver(tree: Path) -> None:
    """The image's resolv.conf points at systemd-resolved, which does not run in a chroot."""
    resolv = tree / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(Path("/etc/resolv.conf").read_text())
