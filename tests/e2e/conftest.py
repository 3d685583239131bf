"""End-to-end: real bake, real VMs (qemu; TCG here), real ACME, real clients. Slow by nature."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, repo_settings

WEBCLIENT = os.environ.get("OUTBAND_E2E_WEBCLIENT", "hydrogen")  # Element needs GitHub, unreachable in CI


def invoke(*args: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"invoke {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def settings():
    return repo_settings(webclient=WEBCLIENT)


@pytest.fixture(scope="session")
def baked(settings) -> dict:
    """One bake for the session (the artifact cache makes it fast when warm)."""
    invoke("bake", "--webclient", WEBCLIENT)
    pointer = json.loads((settings.dirs.output / "images/latest.json").read_text())
    images = settings.dirs.output / "images"
    return {
        "image": images / pointer["image"],
        "manifest": json.loads((images / pointer["manifest"]).read_text()),
        "sbom": json.loads((images / pointer["sbom"]).read_text()),
    }


@pytest.fixture(scope="session")
def store(settings):
    from appliance.state import Store

    return Store(settings.dirs.state)


def state_dir(settings, name: str) -> Path:
    return settings.dirs.state / "appliances" / name


NAMES = ("e2e-a", "e2e-b")


@pytest.fixture(scope="session")
def launched(baked, settings, store):
    """Two appliances, launched one beside the other; destroyed at the end whatever happens."""
    for name in NAMES:
        invoke("destroy", "--name", name, "--yes")
    try:
        for name in NAMES:
            invoke("launch", "--name", name)
        yield {name: store.require(name) for name in NAMES}
    finally:
        for name in NAMES:
            invoke("destroy", "--name", name, "--yes", check=False)


@contextlib.contextmanager
def bare_appliance(settings, name: str, image: Path) -> Iterator[tuple]:
    """The image exactly as baked, booted with SSH access only (no launch contract); destroyed after."""
    import testinfra

    from appliance.targets import LaunchSpec
    from appliance.targets.local import LocalTarget

    target = LocalTarget(settings)
    existing = target.store.get(name)
    if existing:
        target.destroy(existing)
    record = target.launch(LaunchSpec.ssh_only(name, image))
    try:
        yield testinfra.get_host(f"ssh://outband-{name}", ssh_config=str(record.path("ssh_config"))), record
    finally:
        target.destroy(record)
