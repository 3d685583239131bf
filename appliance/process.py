"""Long-running helper processes this machine starts (qemu, pebble, the simulators): started
detached with a PID file and a private log, recognised by PID *and* command line, ended by PID.

Detached (own session): Ctrl-C in the terminal must not kill a VM in the middle of a clean-up, and
a launched appliance outlives the command that launched it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.wait import REAL, Clock


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int, program: str) -> bool:
    """`pid` runs `program` (a basename or path): a PID reused by something else does not count,
    nor does a zombie. /proc/PID/cmdline reads empty for a moment while a process execs (seen right
    after a spawn): then its stat names it (its comm, 15 characters at most)."""
    argv = cmdline(pid)
    if argv:
        return Path(argv[0]).name == Path(program).name
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()[0]
    return state != "Z" and comm == Path(program).name[:15]


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def running(pidfile: Path, program: str) -> int | None:
    """The PID in `pidfile` if that process is alive and is `program`."""
    pid = read_pid(pidfile)
    return pid if pid is not None and alive(pid, program) else None


def spawn(
    argv: Sequence[str | Path],
    log_file: Path,
    pidfile: Path | None = None,
    env: Mapping[str, str] | None = None,
    umask: int = 0o077,
) -> subprocess.Popen:
    """Start detached, output appended to a private log; the PID goes to `pidfile` as well."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
            umask=umask,
        )
    finally:
        os.close(fd)
    if pidfile is not None:
        pidfile.write_text(f"{proc.pid}\n")
    return proc


def stop(pid: int, program: str, timeout: float = 5.0, clock: Clock = REAL) -> None:
    """SIGTERM our own process (checked by command line), SIGKILL it if it outlives `timeout`."""
    if not alive(pid, program):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = clock.now() + timeout
    while clock.now() < deadline and alive(pid, program):
        clock.sleep(0.05)
    if alive(pid, program):
        os.kill(pid, signal.SIGKILL)
    _reap(pid, program)


def kill(pid: int, program: str) -> None:
    """SIGKILL at once (a power cut, for tests of what survives one)."""
    if alive(pid, program):
        os.kill(pid, signal.SIGKILL)
        _reap(pid, program)


def _reap(pid: int, program: str) -> None:
    """Wait (briefly) until a killed process is gone; collect it if it is our own child."""
    for _ in range(200):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child stays a zombie until waited for
        if not alive(pid, program):
            return
        time.sleep(0.01)
