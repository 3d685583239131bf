"""Synapse's start wrapper imports Synapse early and waits for first boot's config. The real boot
(a launch with a contract, and a boot without one) is covered by tests/e2e."""

from __future__ import annotations

import socket
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from appliance import qemu
from tests.conftest import load_script

start = load_script("images/files/usr/local/lib/outband/synapse-start.py", "synapse_start")
firstboot = load_script("images/files/usr/local/lib/outband/firstboot.py", "firstboot")


def test_the_wrapper_unit_and_first_boot_agree_on_paths():
    assert Path("/etc/synapse/homeserver.yaml") == start.CONFIG
    assert start.ARGV[1:] == [f"--config-path={start.CONFIG}"]
    unit = (Path(__file__).parents[2] / "images/files/etc/systemd/system/synapse.service").read_text()
    assert "ExecStart=/opt/synapse/bin/python /usr/local/lib/outband/synapse-start.py\n" in unit
    assert f"ConditionPathExists=|{start.CONFIG}\n" in unit
    # Started early only on a boot the local target flags as a launch (its kernel command line).
    assert f"ConditionKernelCommandLine=|{qemu.CONTRACT_CMDLINE}\n" in unit


def test_a_configured_appliance_starts_at_once(tmp_path):
    config = tmp_path / "homeserver.yaml"
    config.write_text("server_name: a.test\n")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(start.wait_for_config, config).result(timeout=5)


def test_waits_for_first_boot_to_write_the_config(tmp_path, monkeypatch):
    monkeypatch.setattr(start, "POLL_SECONDS", 0.01)
    config = tmp_path / "homeserver.yaml"
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(start.wait_for_config, config)
        time.sleep(0.2)
        assert not waiting.done()
        config.write_text("server_name: a.test\n")
        waiting.result(timeout=5)


def test_the_database_address_is_the_one_first_boot_configures():
    env = firstboot.template_env()
    config = yaml.safe_load(
        env.get_template("homeserver.yaml.j2").render(
            domain="a.test",
            ports=firstboot.CONSTANTS["ports"],
            federation_whitelist=["a.test"],
            federation_ca=None,
            federation_allowed_ips=[],
        )
    )
    assert start.database_address(config) == ("127.0.0.1", 5432)
    assert start.database_address({"database": {"args": {}}}) == ("localhost", 5432)


def unused_address() -> tuple[str, int]:
    """A loopback port that was free a moment ago, with nobody listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


def test_waits_for_the_database_to_accept_connections(monkeypatch):
    monkeypatch.setattr(start, "POLL_SECONDS", 0.01)
    address = unused_address()
    listener = socket.socket()
    listening = threading.Timer(0.2, lambda: (listener.bind(address), listener.listen()))
    listening.start()
    try:
        start.wait_for_database(address, seconds=10)
    finally:
        listening.join()
        listener.close()


def test_no_database_in_time_is_a_clear_failure(monkeypatch):
    monkeypatch.setattr(start, "POLL_SECONDS", 0.01)
    address = unused_address()
    with pytest.raises(SystemExit, match=r"no database at 127\.0\.0\.1"):
        start.wait_for_database(address, seconds=0.1)


def test_synapses_dependency_check_is_skipped_only_where_it_exists(monkeypatch):
    checked: list[object] = []
    module = types.ModuleType("synapse.util.check_dependencies")
    module.check_requirements = lambda extra=None: checked.append(extra)
    util = types.ModuleType("synapse.util")
    util.check_dependencies = module
    monkeypatch.setitem(sys.modules, "synapse", types.ModuleType("synapse"))
    monkeypatch.setitem(sys.modules, "synapse.util", util)
    monkeypatch.setitem(sys.modules, "synapse.util.check_dependencies", module)
    start.skip_dependency_check()
    module.check_requirements()
    module.check_requirements("postgres")
    assert checked == []  # checked at bake time instead (images/provision/20-synapse.sh)
    # A Synapse that no longer has the function: the wrapper stops instead of guessing.
    del module.check_requirements
    with pytest.raises(SystemExit, match="check_requirements is gone"):
        start.skip_dependency_check()
