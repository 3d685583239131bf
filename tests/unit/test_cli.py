"""The operator's commands as typed: `--help` after any task shows its help and runs nothing; a
value where a name is expected never starts with '-'; piped output is whole."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.targets import local
from tests.conftest import REPO, repo_settings


def invoke_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if k != "DIGITALOCEAN_TOKEN"},
        "INVOKE_OUTBAND_DIRS_STATE": str(tmp_path / "state"),
        "INVOKE_OUTBAND_DIRS_OUTPUT": str(tmp_path / "out"),
        "INVOKE_OUTBAND_DIRS_CACHE": str(tmp_path / "cache"),
    }
    return subprocess.run(
        ["invoke", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def task_names() -> list[str]:
    listing = subprocess.run(["invoke", "--list"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [m.group(1) for line in listing.splitlines() if (m := re.match(r"^  ([a-z][\w.-]*)", line))]


def test_the_list_names_every_task():
    names = task_names()
    assert {"bake", "launch", "verify", "destroy", "user.add", "control-room", "audit", "user.devices"} <= set(names)


def test_help_after_any_task_shows_its_help_and_runs_nothing(tmp_path):
    """Every task of `invoke --list`, with --help (and -h for the ones that take a name first)."""
    cases = [(task, "--help") for task in task_names()]
    cases += [(task, "-h") for task in ("user.add", "user.devices", "control-room", "launch")]
    with ThreadPoolExecutor(max_workers=4) as pool:  # each is a process start: all at once
        results = dict(zip(cases, pool.map(lambda c: invoke_cli(tmp_path / c[0] / c[1], *c), cases), strict=True))
    wrong = {
        case: (r.returncode, r.stdout[:120], r.stderr[-200:])
        for case, r in results.items()
        if r.returncode != 0 or not r.stdout.startswith(f"Usage: inv[oke] [--core-opts] {case[0]} ")
    }
    assert wrong == {}
    assert not list(tmp_path.rglob("out")) and not list(tmp_path.rglob("state"))  # no log, no state: nothing ran


@pytest.mark.parametrize(
    "args",
    [["user.add", "-x"], ["user.deactivate", "--admin"], ["user.devices", "-q"], ["user.reset-password", "--nope"]],
)
def test_a_dash_value_is_refused_before_anything_runs(tmp_path, args):
    result = invoke_cli(tmp_path, *args)
    assert result.returncode != 0
    assert "may not start with '-'" in result.stderr or "No idea what" in result.stderr
    assert not (tmp_path / "out").exists()


def test_piped_output_is_never_cut(tmp_path):
    """A table goes to a pipe whole, one tab-separated line per row (rich would cut at 80 columns)."""
    from appliance.table import Table

    table = Table("a", "b")
    table.add("x" * 150, "y z")
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        table.show(stream=stream)
    assert out.read_text() == "a\tb\n" + "x" * 150 + "\ty z\n"


def test_a_launch_takes_the_next_address_whose_ports_are_free(tmp_path):
    """Another state directory's appliance (or anything else) may hold ports on 127.0.100.1."""
    s = repo_settings()
    import dataclasses

    s = dataclasses.replace(s, dirs=dataclasses.replace(s.dirs, state=tmp_path / "state"))
    target = local.LocalTarget(s)
    first = target.allocate_address()
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind((first, 8448))
        blocker.listen()
        assert target.allocate_address() != first
