"""End-to-end: real bakes, real VMs (qemu; TCG here), real ACME, real clients. Slow by nature.

Every VM test runs the operator's commands as typed (`invoke …` in a subprocess) against this
session's own state and output directories (never the developer's), launches pass `--image`
explicitly, and launched appliances are shared through session fixtures: each boot costs a minute.
The artifact cache (~/.cache/outband) is shared on purpose: a warm run bakes in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.conftest import REPO, repo_settings

WEBCLIENT = os.environ.get("OUTBAND_E2E_WEBCLIENT", "hydrogen")  # Element needs GitHub, unreachable in CI
REPORTS = REPO / "build/reports"


@dataclass(frozen=True)
class Session:
    """This test session's own directories; the invoke subprocesses get them through INVOKE_* variables."""

    state: Path
    output: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "INVOKE_OUTBAND_DIRS_STATE": str(self.state),
            "INVOKE_OUTBAND_DIRS_OUTPUT": str(self.output),
            **extra,
        }


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> Iterator[Session]:
    """The session's directories, also in this process's environment for the whole session: every
    `invoke` it runs (the helper below, or a test's own subprocess) uses them."""
    root = tmp_path_factory.mktemp("outband-e2e")
    session = Session(root / "state", root / "output")
    saved = {k: os.environ.get(k) for k in ("INVOKE_OUTBAND_DIRS_STATE", "INVOKE_OUTBAND_DIRS_OUTPUT")}
    os.environ.update(session.env())
    yield session
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def invoke(
    *args: str, check: bool = True, timeout: float = 3600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`invoke ARGS` as an operator types it (stdin closed, output captured, i.e. piped), with the
    session's directories (the e2e fixture puts them in the environment)."""
    assert "INVOKE_OUTBAND_DIRS_STATE" in os.environ, "request the e2e fixture (directly or through another)"
    result = subprocess.run(
        ["invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env or dict(os.environ),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"invoke {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def settings(e2e):
    s = repo_settings(webclient=WEBCLIENT)
    return replace(s, dirs=replace(s.dirs, state=e2e.state, output=e2e.output))


@pytest.fixture(scope="session")
def baked(e2e, settings) -> dict:
    """One bake for the session (the artifact cache makes it fast when warm)."""
    result = invoke("bake", "--webclient", WEBCLIENT)
    path = Path(re.search(r"^image:\s+(\S+\.qcow2)", result.stdout, re.MULTILINE).group(1))
    stem = path.name.removesuffix(".qcow2")
    return {
        "image": path,
        "manifest": json.loads(path.with_name(f"{stem}.manifest.json").read_text()),
        "sbom": json.loads(path.with_name(f"{stem}.sbom.json").read_text()),
    }


@pytest.fixture(scope="session")
def store(e2e, settings):
    from appliance.state import Store

    return Store(settings.dirs.state)


def state_dir(settings, name: str) -> Path:
    return settings.dirs.state / "appliances" / name


@contextlib.contextmanager
def appliance(baked, store, name: str, *options: str) -> Iterator:
    """A launched appliance (the operator's `invoke launch --image …`), destroyed afterwards whatever
    happens, its case record with it (a test's record; the journey shows destroy refusing one)."""
    invoke("destroy", "--name", name, "--yes", "--discard-record")
    try:
        invoke("launch", "--name", name, "--image", str(baked["image"]), *options)
        yield store.require(name)
    finally:
        invoke("destroy", "--name", name, "--yes", "--discard-record", check=False)


@pytest.fixture(scope="session")
def journey_appliance(baked, store):
    """The appliance the responder's journey (and the team operations) run on."""
    with appliance(baked, store, "e2e-a") as record:
        yield record


@pytest.fixture(scope="session")
def second_appliance(baked, store):
    """A second appliance beside the first (lifecycle checks, surviving its host, the team: until
    tests/e2e/test_team.py makes them one, it is a server outside the first one's list). Launched
    alone: its `invoke verify` must not depend on the first being up."""
    with appliance(baked, store, "e2e-b") as record:
        yield record


@contextlib.contextmanager
def bare_appliance(settings, name: str, image: Path) -> Iterator[tuple]:
    """The image exactly as baked, booted with SSH access only (no launch contract); destroyed after."""
    import testinfra

    from appliance import images
    from appliance.targets import LaunchSpec
    from appliance.targets.local import LocalTarget

    target = LocalTarget(settings)
    existing = target.store.get(name)
    if existing:
        target.destroy(existing)
    record = target.launch(LaunchSpec.ssh_only(name, images.disk_image(image)))
    try:
        yield testinfra.get_host(f"ssh://outband-{name}", ssh_config=str(record.path("ssh_config"))), record
    finally:
        target.destroy(record)


@pytest.fixture(scope="module")
def loop():
    """One event loop per test module, in its own thread: a client's HTTP session (and a browser)
    lives in the loop that made it, across the module's fixtures and tests."""
    from tests.e2e.browser import Loop

    loop = Loop()
    yield loop
    loop.close()


def facts(record) -> dict:
    return json.loads(record.path("facts.json").read_text())
