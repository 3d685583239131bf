"""First boot reports its outcome on the serial console; the launcher reads it from qemu's log."""

from __future__ import annotations

import subprocess

from appliance.targets import local
from appliance.wait import Clock
from tests.conftest import load_script

firstboot = load_script("images/files/usr/local/lib/outband/firstboot.py", "firstboot")

# What the console shows around first boot's lines (systemd's status, a login prompt, escapes).
NOISE = "\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r\nDebian GNU/Linux 13 alpha ttyS0\r\n"


def console(*lines: str) -> str:
    return NOISE + "".join(f"[   61.2] firstboot.py[412]: {line}\r\n" for line in lines) + NOISE


def test_no_log_yet_or_still_running_is_none(tmp_path):
    log = tmp_path / "serial.log"
    assert local.firstboot_outcome(log) is None
    log.write_text(console("outband-firstboot: running certbot certonly"))
    assert local.firstboot_outcome(log) is None


def test_success(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text(console("outband-firstboot: running nginx -t -q", f"outband-firstboot: {firstboot.DONE} for a.test"))
    assert local.firstboot_outcome(log) == "ok"


def test_failure_gives_its_cause(tmp_path):
    log = tmp_path / "serial.log"
    cause = "CalledProcessError: Command '['certbot', 'certonly']' returned non-zero exit status 1."
    log.write_text(console(f"outband-firstboot: {firstboot.FAILED} {cause}"))
    assert local.firstboot_outcome(log) == cause


def test_a_failure_is_printed_and_raised(capsys, monkeypatch):
    def broken() -> str:
        raise SystemExit("launch contract lacks secrets.turn")

    monkeypatch.setattr(firstboot, "configure", broken)
    try:
        firstboot.main()
    except SystemExit as e:
        assert str(e) == "launch contract lacks secrets.turn"
    else:
        raise AssertionError("main() must fail when configuring fails")
    assert f"{firstboot.FAILED} SystemExit: launch contract lacks secrets.turn" in capsys.readouterr().out


def systemctl_show(monkeypatch, text: str) -> None:
    """What `systemctl show` answers over SSH (the guest's side is exercised by the e2e tests)."""
    from appliance import ssh

    monkeypatch.setattr(ssh, "command", lambda record, remote, timeout=60: subprocess.CompletedProcess([], 0, text, ""))


def test_ssh_check_waits_while_the_unit_has_not_been_considered_yet(monkeypatch):
    # Before its job runs, systemd reports ConditionResult=no with no timestamp: not a verdict.
    systemctl_show(monkeypatch, "ActiveState=inactive\nConditionResult=no\nConditionTimestampMonotonic=0\n")
    assert local.LocalTarget.check_firstboot(None) is None
    systemctl_show(monkeypatch, "ActiveState=activating\nConditionResult=yes\nConditionTimestampMonotonic=3\n")
    assert local.LocalTarget.check_firstboot(None) is None


def test_ssh_check_reports_a_skipped_failed_or_finished_first_boot(monkeypatch):
    systemctl_show(monkeypatch, "ActiveState=inactive\nConditionResult=no\nConditionTimestampMonotonic=35123456\n")
    assert "no launch contract" in local.LocalTarget.check_firstboot(None)
    systemctl_show(monkeypatch, "ActiveState=failed\nConditionResult=yes\nConditionTimestampMonotonic=35123456\n")
    assert local.LocalTarget.check_firstboot(None) == "the first-boot unit failed"
    systemctl_show(monkeypatch, "ActiveState=active\nConditionResult=yes\nConditionTimestampMonotonic=35123456\n")
    assert local.LocalTarget.check_firstboot(None) == "ok"


class FakeBoot:
    """The launcher's view of a booting appliance, on a fake clock: the console reports first boot's
    outcome at `reports_at` (never if None); SSH answers from `ssh_at`. Records when SSH was tried."""

    def __init__(self, monkeypatch, tmp_path, reports_at: float | None, ssh_at: float = 30.0):
        self.now, self.ssh_tries, self.reports_at, self.ssh_at = 0.0, [], reports_at, ssh_at
        self.serial = tmp_path / "serial.log"
        monkeypatch.setattr(local.qemu, "alive", lambda pid: True)
        monkeypatch.setattr(local.LocalTarget, "probe_ssh", staticmethod(self.probe_ssh))
        monkeypatch.setattr(local.LocalTarget, "serves_matrix", staticmethod(lambda *a: True))
        monkeypatch.setattr(local.LocalTarget, "check_firstboot", staticmethod(lambda record: "ok"))
        self.record = type("Record", (), {"data": {"address": "127.0.100.9", "domain": "a.test"}})()
        self.record.path = lambda name: tmp_path / name

    def target(self) -> local.LocalTarget:
        target = object.__new__(local.LocalTarget)
        target.clock = Clock(now=lambda: self.now, sleep=self.sleep)
        return target

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.reports_at is not None and self.now >= self.reports_at and not self.serial.exists():
            self.serial.write_text(console(f"outband-firstboot: {firstboot.DONE} for a.test"))

    def probe_ssh(self, record) -> bool:
        self.ssh_tries.append(self.now)
        self.now += 0.5  # an ssh process's round trip
        return self.now >= self.ssh_at


def test_launch_leaves_ssh_alone_until_first_boot_reports(monkeypatch, tmp_path):
    """SSH handshakes cost the busy emulated guest CPU: a launch's first comes after the report."""
    boot = FakeBoot(monkeypatch, tmp_path, reports_at=65.0)
    boot.target().wait_healthy(boot.record, pid=1)
    assert boot.ssh_tries and min(boot.ssh_tries) >= 65.0
    assert len(boot.ssh_tries) == 1


def test_a_silent_console_gets_ssh_after_a_while(monkeypatch, tmp_path):
    """A first boot that never reports (it did not run, or hangs) is asked over SSH, not waited on."""
    boot = FakeBoot(monkeypatch, tmp_path, reports_at=None)
    boot.target().wait_healthy(boot.record, pid=1)
    assert min(boot.ssh_tries) >= local.QUIET_CONSOLE_SECONDS


def test_a_bare_boot_probes_ssh_at_once(monkeypatch, tmp_path):
    boot = FakeBoot(monkeypatch, tmp_path, reports_at=None, ssh_at=40.0)
    boot.target().wait_healthy(boot.record, pid=1, ssh_only=True)
    assert min(boot.ssh_tries) < 1 and boot.now >= 40.0
