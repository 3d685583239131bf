"""Stopping and starting a local appliance: the bad cases are refused clearly and change nothing.
(The good path — a host restart, the conversation still there — runs on a real appliance in
tests/e2e/test_survive.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from appliance.errors import ExitStatus, OutbandError
from appliance.state import Store
from appliance.targets import local
from tests.conftest import repo_settings


@pytest.fixture
def target(tmp_path):
    s = repo_settings()
    return local.LocalTarget(dataclasses.replace(s, dirs=dataclasses.replace(s.dirs, state=tmp_path / "state")))


@pytest.fixture
def stopped(target):
    record = target.store.create("alpha", "local")
    record.status = "stopped"
    record.set(address="127.0.100.77", domain="alpha.outband.test")
    return record


def refused(call, message: str) -> OutbandError:
    with pytest.raises(OutbandError, match=message) as err:
        call()
    assert err.value.hint
    return err.value


def test_stopping_a_stopped_appliance_is_refused(target, stopped):
    assert refused(lambda: target.stop(stopped), "is not running").status == ExitStatus.USAGE


def test_starting_a_running_appliance_is_refused(target, stopped, monkeypatch):
    stopped.set(pid=4242)
    monkeypatch.setattr(local.qemu, "alive", lambda pid: pid == 4242)
    refused(lambda: target.start(stopped), "is running already")


def test_starting_without_a_disk_is_refused_and_changes_nothing(target, stopped):
    before = stopped.file.read_text()
    refused(lambda: target.start(stopped), "disk of alpha is missing")
    assert Store(target.s.dirs.state).require("alpha").file.read_text() == before


def test_a_damaged_disk_is_not_booted(target, stopped):
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stopped.path(local.BASE)), "64M"], check=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", local.BASE, str(stopped.path("disk.qcow2"))],
        check=True,
        cwd=stopped.dir,
    )
    with stopped.path("disk.qcow2").open("r+b") as f:  # wreck the L1 table's offset in the header
        f.seek(40)
        f.write(b"\xff" * 8)
    refused(lambda: target.start(stopped), "is damaged")


def test_a_half_made_appliance_cannot_be_started(target):
    record = target.store.create("beta", "local")  # status "creating": its launch never finished
    refused(lambda: target.start(record), "never launched completely")
