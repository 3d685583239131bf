"""Running host commands: output goes to the log file, failures become one-line errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance import log
from appliance.errors import ExitStatus, die

# Host tools and the Debian package that provides each, for the "missing tool" hint.
PROVIDERS = {
    "mmdebstrap": "mmdebstrap",
    "packer": "packer",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "pebble": "pebble",
    "pebble-challtestsrv": "pebble",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "npm": "npm",
    "zstd": "zstd",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = PROVIDERS.get(tool, tool)
        die(f"{tool} is not installed", hint=f"apt-get install {package}", status=ExitStatus.MISSING_TOOL)
    return path


def run(
    argv: Sequence[str | Path],
    *,
    what: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    capture: bool = False,
    hint: str | None = None,
) -> str:
    """Run a command with its output in the log; on failure die naming `what` and the log line."""
    argv = [str(a) for a in argv]
    require(argv[0])
    first_line = log.log_line_count() + 1  # the command's own line, written next
    log.detail("$ " + " ".join(argv))
    if capture:
        proc = subprocess.run(argv, input=input, capture_output=True, env=env, cwd=cwd, check=False)
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        if err:
            log.detail(err.rstrip())
        last_lines = (err or out).strip().splitlines()
    else:
        # Stream line by line into the log, so the log is live and a failure's line number is right.
        with subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        ) as proc:
            if input is not None:
                assert proc.stdin is not None
                proc.stdin.write(input)
                proc.stdin.close()
            assert proc.stdout is not None
            last_lines = []
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                log.detail(line)
                last_lines = [*last_lines[-19:], line]
        out = ""
    if proc.returncode != 0:
        where = f" (see {log.log_path()}:{first_line})" if log.log_path() else ""
        tail = f": {last_lines[-1]}" if last_lines else ""
        die(f"{what or argv[0]} failed with exit status {proc.returncode}{tail}{where}", hint=hint)
    return out
