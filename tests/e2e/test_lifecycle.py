"""bake (cached) → launch → verify → destroy, for real: two appliances side by side, bad input, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from appliance import qemu, ssh
from tests.conftest import REPO
from tests.e2e.conftest import NAMES, invoke, state_dir

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("name", NAMES)
def test_verify_passes(launched, name):
    result = invoke("verify", "--name", name, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_appliances_run_side_by_side_on_their_own_addresses(launched):
    addresses = {r.data["address"] for r in launched.values()}
    assert len(addresses) == 2
    listing = invoke("ls").stdout + invoke("ls").stderr
    for name in NAMES:
        assert name in listing


def test_two_launches_never_share_a_secret_or_key(launched):
    a, b = (launched[n] for n in NAMES)
    sa = json.loads(a.path("secrets.json").read_text())
    sb = json.loads(b.path("secrets.json").read_text())
    for field in sa:
        assert sa[field] != sb[field], field
    assert sa["signing_key"].split()[2] != sb["signing_key"].split()[2]
    assert a.path("host_ed25519").read_text() != b.path("host_ed25519").read_text()
    assert a.path("operator_ed25519").read_text() != b.path("operator_ed25519").read_text()


def test_state_is_private_and_the_seed_is_gone(launched):
    for record in launched.values():
        assert record.dir.stat().st_mode & 0o077 == 0
        for path in record.dir.iterdir():
            if path.is_file():
                assert path.stat().st_mode & 0o077 == 0, path
        assert not record.path("seed.iso").exists()
        block = qemu.qmp(record.path("qmp.sock"), "query-block")
        cd = next(d for d in block if d.get("qdev", "").endswith("seedcd") or d["device"] == "seed")
        assert "inserted" not in cd  # the virtual drive is empty


def test_a_name_in_use_is_refused_and_nothing_is_touched(launched):
    before = launched["e2e-a"].path("appliance.json").read_text()
    result = invoke("launch", "--name", "e2e-a", check=False)
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert launched["e2e-a"].path("appliance.json").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "e2e-bad", "--domain", "not a domain"], "invalid domain"),
        (["--name", "Bad_Name"], "invalid appliance name"),
        (["--name", "e2e-bad", "--image", "/nonexistent.qcow2"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_with_a_hint_and_leaves_nothing(settings, args, message):
    result = invoke("launch", *args, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].strip().startswith("hint: ")
    assert not state_dir(settings, "e2e-bad").exists()
    assert not state_dir(settings, "Bad_Name").exists()


def test_a_taken_port_is_refused_and_leaves_nothing(baked, settings, store, launched):
    used = {r.data.get("address") for r in store.all()}
    address = next(f"127.0.100.{n}" for n in range(1, 255) if f"127.0.100.{n}" not in used)
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind((address, 8448))
        blocker.listen()
        result = invoke("launch", "--name", "e2e-port", check=False)
    assert result.returncode == 2
    assert f"port 8448 on {address} is already taken" in result.stderr
    assert not state_dir(settings, "e2e-port").exists()


def _default_sigint() -> None:
    # A job started in the background without job control (`cmd &` in a script) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: give the launch Ctrl-C's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_launch_removes_what_was_made(baked, settings, launched, signum, status):
    proc = subprocess.Popen(
        ["invoke", "launch", "--name", "e2e-int"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    record_file = state_dir(settings, "e2e-int") / "appliance.json"
    pid = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and pid is None:  # wait until the VM runs, then interrupt
            if record_file.exists():
                pid = json.loads(record_file.read_text())["data"].get("pid")
            time.sleep(0.2)
        assert pid, "the launch never started its VM"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == status, err
        assert not state_dir(settings, "e2e-int").exists()
        assert not qemu.alive(int(pid))
    finally:  # a failed check must not leave its VM running for the rest of the run
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if state_dir(settings, "e2e-int").exists():
            invoke("destroy", "--name", "e2e-int", "--yes")


def test_a_failing_first_boot_is_reported_with_its_cause_and_cleaned_up(baked, settings, monkeypatch):
    """Fault injected at the DNS: the names point at an address where no appliance listens, so the
    real ACME validation fails on the appliance. The launcher must name the cause (read from the
    serial console) and remove everything, VM included."""
    from appliance import pebble
    from appliance.errors import OutbandError
    from appliance.targets import LaunchSpec
    from appliance.targets.local import LocalTarget

    real_add_names = pebble.add_names
    monkeypatch.setattr(pebble, "add_names", lambda names, address: real_add_names(names, "127.0.100.254"))
    target = LocalTarget(settings)
    spec = LaunchSpec(
        name="e2e-acme", domain="e2e-acme.outband.test", image=baked["image"], contact_email="ops@example.org"
    )
    with pytest.raises(OutbandError, match=r"first boot failed on the appliance: CalledProcessError: .*certbot"):
        target.launch(spec)
    assert not state_dir(settings, "e2e-acme").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"outband-e2e-acme" in read_or_empty(p)]


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended while we looked
        return b""


def remote(record, command: str) -> str:
    """stdout of a command on the appliance, "" while SSH does not answer (e.g. during a reboot)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        result = ssh.command(record, command, timeout=20)
        if result.returncode == 0:
            return result.stdout.strip()
    return ""


def test_a_rebooted_appliance_comes_back_configured_and_verifies(launched):
    """A configured appliance survives a reboot (a kernel update needs one): cloud-init and first
    boot stay retired, the services start on their own, and verify passes again."""
    record = launched["e2e-a"]
    boot_id = remote(record, "cat /proc/sys/kernel/random/boot_id")
    assert boot_id
    ssh.command(record, "sudo systemctl reboot", timeout=20)
    ssh.close_master(record)
    deadline = time.monotonic() + 600
    while remote(record, "cat /proc/sys/kernel/random/boot_id") in ("", boot_id):
        assert time.monotonic() < deadline, "no new boot of e2e-a within 10 minutes"
        time.sleep(3)
    while remote(record, "systemctl is-active synapse.service coturn.service nginx.service").split() != ["active"] * 3:
        assert time.monotonic() < deadline, "services not back within 10 minutes of the reboot"
        time.sleep(3)
    result = invoke("verify", "--name", "e2e-a", check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_destroy_removes_everything_and_is_idempotent(launched, settings):
    record = launched["e2e-b"]
    pid = int(record.data["pid"])
    address = record.data["address"]
    started = time.monotonic()
    invoke("destroy", "--name", "e2e-b", "--yes")
    assert time.monotonic() - started < 30
    assert not qemu.alive(pid)
    assert not state_dir(settings, "e2e-b").exists()
    with socket.socket() as sock:  # its ports are free again
        sock.bind((address, 443))
    again = invoke("destroy", "--name", "e2e-b", "--yes")
    assert again.returncode == 0
