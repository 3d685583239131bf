"""The small shared helpers: waiting, supervised processes, systemd's answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance import process, systemd
from appliance.errors import OutbandError
from appliance.wait import Clock, wait_until


class FakeClock(Clock):
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []
        super().__init__(now=lambda: self.t, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_wait_until_returns_the_first_truthy_answer():
    answers = iter([None, 0, "", "ready"])
    clock = FakeClock()
    assert wait_until(lambda: next(answers), timeout=10, interval=1, what="x", clock=clock) == "ready"
    assert clock.sleeps == [1, 1, 1]


def test_wait_until_names_what_it_waited_for_and_never_overshoots():
    clock = FakeClock()
    with pytest.raises(OutbandError, match="gave up after 10s waiting for the droplet") as err:
        wait_until(lambda: False, timeout=10, interval=3, backoff=2, what="the droplet", hint="raise it", clock=clock)
    assert err.value.hint == "raise it"
    assert clock.sleeps == [3, 6, 1]  # back-off, and the last wait ends at the deadline
    assert clock.t == 10


def test_a_process_is_ours_only_if_its_command_line_says_so(tmp_path):
    proc = process.spawn([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "log", tmp_path / "pid")
    try:
        assert process.running(tmp_path / "pid", sys.executable) == proc.pid
        assert not process.alive(proc.pid, "qemu-system-x86_64")  # a reused PID is not a VM
        assert (tmp_path / "log").stat().st_mode & 0o777 == 0o600
    finally:
        process.stop(proc.pid, sys.executable)
    assert not process.alive(proc.pid, sys.executable)
    assert process.running(tmp_path / "pid", sys.executable) is None


def test_stop_kills_what_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(30)"
    proc = process.spawn([sys.executable, "-c", code], tmp_path / "log")
    subprocess.run(["sh", "-c", f"until grep -q up {tmp_path / 'log'}; do sleep 0.05; done"], timeout=10, check=True)
    process.stop(proc.pid, sys.executable, timeout=0.5)
    assert not process.alive(proc.pid, sys.executable)


def test_systemctl_show_is_parsed_per_unit():
    text = "Id=a.service\nActiveState=active\n\nId=b.service\nActiveState=failed\nExecStart={ path=/x ; }\n"
    assert systemd.parse_show(text) == [
        {"Id": "a.service", "ActiveState": "active"},
        {"Id": "b.service", "ActiveState": "failed", "ExecStart": "{ path=/x ; }"},
    ]
    assert systemd.show_one("") == {}
