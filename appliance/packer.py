"""Driving Packer (images/packer.json) with live progress from its `-machine-readable` output.

Packer runs as a subprocess with its own working directory (the template's script paths are
relative to the repository) and its own environment (the DigitalOcean token, the API's CA): this
process's environment and working directory are never changed.

Why not packer-py any more: its PackerExecutable builds the same argument list, but runs Packer
with no working directory or environment of its own and buffers the output until Packer exits;
using it meant changing os.environ and the cwd of the whole process around it and calling its
private `_explode_args`. The argument list below is the whole of what it added.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance import log
from appliance.config import IMAGES, REPO
from appliance.errors import die
from appliance.run import require

TEMPLATE = IMAGES / "packer.json"
# Packer keeps downloads in ./packer_cache unless told otherwise: keep the repository clean.
PACKER_CACHE = str(Path.home() / ".cache/outband/packer")


@dataclass(frozen=True)
class Record:
    """One `-machine-readable` line: timestamp,target,type,data…"""

    target: str
    type: str
    data: list[str]


def parse_line(line: str) -> Record | None:
    parts = line.rstrip("\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    # Packer escapes commas and newlines inside fields.
    data = [p.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "") for p in parts[3:]]
    return Record(parts[1], parts[2], data)


def argv(command: str, variables: Mapping[str, str], only: str | None = None) -> list[str]:
    """`packer COMMAND -machine-readable -var k=v … [-only=…] TEMPLATE` (`validate` in 1.6 has no -color)."""
    args = [require("packer"), command, "-machine-readable"]
    if command == "build":
        args.append("-color=false")
    for key, value in sorted(variables.items()):
        args += ["-var", f"{key}={value}"]
    if only:
        args.append(f"-only={only}")
    return [*args, str(TEMPLATE)]


def environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PACKER_CACHE_DIR": os.environ.get("PACKER_CACHE_DIR", PACKER_CACHE), **(extra or {})}


def validate(variables: Mapping[str, str], only: str | None = None, env: Mapping[str, str] | None = None) -> None:
    result = subprocess.run(
        argv("validate", variables, only),
        cwd=REPO,
        env=environment(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    log.detail(result.stdout + result.stderr)
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        errors = [r.data[-1] for r in map(parse_line, lines) if r and r.type == "ui" and r.data]
        die(
            f"packer validate failed: {errors[-1].strip() if errors else result.stdout.strip()[-200:]}",
            hint=f"see {log.log_path()}",
        )


def build(variables: Mapping[str, str], only: str, env: Mapping[str, str] | None = None) -> None:
    """`packer build -only=…` with every line in the log and packer's last 'say' as live progress."""
    errors: list[str] = []
    proc = subprocess.Popen(
        argv("build", variables, only),
        cwd=REPO,
        env=environment(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = parse_line(line)
            if record is None:
                log.detail(line.rstrip())
            elif record.type == "ui" and len(record.data) >= 2:
                kind, text = record.data[0], record.data[1].strip()
                log.detail(f"packer {kind}: {text}")
                if kind == "error":
                    errors.append(text)
                elif kind == "say":
                    log.progress(text.removeprefix("==> ").strip())
            else:
                log.detail(f"packer {record.type}: {','.join(record.data)}")
        proc.wait()
    except BaseException:
        stop(proc)
        raise
    if proc.returncode != 0:
        cause = errors[-1].splitlines()[-1] if errors else "see the log"
        die(f"packer build ({only}) failed: {cause}", hint=f"see {log.log_path()}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT first: packer then tears down its VM (or droplet) and temporary files itself."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
