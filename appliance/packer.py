"""Driving Packer (images/packer.json) through packer-py, with live progress.

packer-py builds the argument list and runs the binary, but buffers all output until packer exits
and its default binary path is wrong. So: the real path, and a pipe as its stdout that this module
reads line by line, parsing `-machine-readable` records into the log and the progress line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packerpy import PackerExecutable

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


def arguments(variables: Mapping[str, str], only: str | None = None, build: bool = False) -> dict[str, object]:
    """packer-py keyword arguments: `-var k=v` for each variable, `-only`; no colour for builds."""
    kwargs: dict[str, object] = {"var": dict(variables)}
    if build:
        kwargs["color"] = "false"  # `packer validate` (1.6) has no -color flag
    if only:
        kwargs["only"] = only
    return kwargs


class _Packer(PackerExecutable):
    """packer-py's argument building, but keeping the process handle: packer-py's execute_cmd hides
    it, and an interrupted bake must stop packer (which then stops its VM) instead of orphaning it."""

    proc: subprocess.Popen | None = None

    def execute_cmd(self, packer_cmd: str, template: str | None = None, **kwargs: object) -> tuple:
        argv = [self.configuration[PackerExecutable.PATH], packer_cmd]
        if "machine-readable" in self.configuration:
            argv.append("-machine-readable")
        argv.extend(self._explode_args(**kwargs))
        if template:
            argv.append(template)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.configuration["stdout"], stderr=self.configuration["stderr"]
        )
        out, err = self.proc.communicate()
        return self.proc.returncode, out, err


def _executable(stdout: int | None = None) -> _Packer:
    config = {"stdout": stdout if stdout is not None else subprocess.PIPE, "stderr": subprocess.STDOUT}
    return _Packer(require("packer"), machine_readable=True, config=config)


def _stop(executable: _Packer) -> None:
    """SIGINT first: packer then tears down its VM and temporary files itself."""
    proc = executable.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def validate(variables: Mapping[str, str], only: str | None = None) -> None:
    saved = os.environ.get("PACKER_CACHE_DIR")
    os.environ.setdefault("PACKER_CACHE_DIR", PACKER_CACHE)
    try:
        code, out, _ = _executable().validate(str(TEMPLATE), **arguments(variables, only))
    finally:
        if saved is None:
            os.environ.pop("PACKER_CACHE_DIR", None)
    text = out.decode(errors="replace") if out else ""
    log.detail(text)
    if code != 0:
        errors = [r.data[-1] for r in map(parse_line, text.splitlines()) if r and r.type == "ui" and r.data]
        die(
            f"packer validate failed: {errors[-1].strip() if errors else text.strip()[-200:]}",
            hint=f"see {log.log_path()}",
        )


def build(variables: Mapping[str, str], only: str, env: Mapping[str, str] | None = None) -> None:
    """`packer build -only=…` with every line in the log and packer's last 'say' as live progress."""
    read_fd, write_fd = os.pipe()
    result: dict[str, object] = {}
    errors: list[str] = []

    executable = _executable(write_fd)

    def run() -> None:
        try:
            result["code"], _, _ = executable.build(str(TEMPLATE), **arguments(variables, only, build=True))
        finally:
            os.close(write_fd)

    # The DigitalOcean token travels in packer's environment, never on a command line; packer
    # resolves the template's relative script paths from its working directory.
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    os.environ.update(env or {})
    os.environ.setdefault("PACKER_CACHE_DIR", PACKER_CACHE)
    os.chdir(REPO)
    try:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        with os.fdopen(read_fd) as lines:
            for line in lines:
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
        worker.join()
    except BaseException:
        _stop(executable)
        raise
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    if result.get("code") != 0:
        cause = errors[-1].splitlines()[-1] if errors else "see the log"
        die(f"packer build ({only}) failed: {cause}", hint=f"see {log.log_path()}")
