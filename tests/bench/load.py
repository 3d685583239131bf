"""Benchmark (run by `invoke bench --load`, not by the test suite): issue 19's load on a launched
appliance — 20 responders with end-to-end encryption (tests/e2e/load.py), each sending 100
messages, one every 20 s (1 message/s for the team, steady), alternately to #control and to one of
five other rooms, the case recorder in every room.

Reports: acknowledged, refused, lost, duplicated and undecryptable messages; send → decrypted
latency over every receiving member; the appliance's CPU busy share and memory in use at their peak
(sampled every 5 s over SSH) and whether the kernel's OOM killer ran. Bounded: 2,000 messages, and a
deadline for the stragglers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from appliance import launch, ssh
from appliance.config import Settings
from appliance.state import Record, Store
from tests.e2e.load import Outcome, Team

MESSAGES = 100  # per responder
INTERVAL_S = 20.0  # per responder: 20 of them → one message a second in all
DRAIN_S = 600  # after the last send, how long the members may take to receive the rest
CUT_MESSAGES, CUT_INTERVAL_S, CUT_AFTER = 10, 10.0, 40  # then the power cut, under two messages a second
SAMPLE = "while :; do head -n 1 /proc/stat; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; sleep 5; done"


class Sampler:
    """/proc/stat and /proc/meminfo on the appliance every 5 s, over one SSH session."""

    def __init__(self, record: Record):
        self.proc = subprocess.Popen(
            ssh.argv(record, SAMPLE),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.cpu_busy: list[float] = []
        self.mem_used_mb: list[float] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        last: list[int] | None = None
        total = 0
        for line in self.proc.stdout:
            fields = line.split()
            if fields[0] == "cpu":
                ticks = [int(x) for x in fields[1:]]
                if last is not None and sum(ticks) > sum(last):
                    idle = (ticks[3] + ticks[4]) - (last[3] + last[4])  # idle + iowait
                    self.cpu_busy.append(100 * (1 - idle / (sum(ticks) - sum(last))))
                last = ticks
            elif fields[0] == "MemTotal:":
                total = int(fields[1])
            elif fields[0] == "MemAvailable:" and total:
                self.mem_used_mb.append((total - int(fields[1])) / 1024)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


async def _steady(team: Team, passwords: dict[str, str]) -> float:
    await team.sign_in(passwords)
    receiving = asyncio.create_task(team.receive())
    sending_s = await team.send(MESSAGES, INTERVAL_S)
    deadline = time.monotonic() + DRAIN_S
    while not team.all_arrived() and time.monotonic() < deadline:
        await asyncio.sleep(2)
    team.stop_receiving()
    await asyncio.wait_for(receiving, 60)
    return sending_s


async def _power_cut(team: Team, s: Settings, record: Record) -> float:
    """The same team sends again (two messages a second); once CUT_AFTER more are acknowledged the
    VM is killed (no shutdown), then `invoke start`'s code brings it back. Returns the restart's time."""
    receiving = asyncio.create_task(team.receive())
    sending = asyncio.create_task(team.send(CUT_MESSAGES, CUT_INTERVAL_S, tag="cut"))
    await team.acknowledged(len(team.acked) + CUT_AFTER)
    os.kill(int(record.data["pid"]), signal.SIGKILL)
    await asyncio.sleep(2)
    team.stop_receiving()
    for task in (sending, receiving):
        task.cancel()
    await asyncio.gather(sending, receiving, return_exceptions=True)
    started = time.monotonic()
    await asyncio.to_thread(launch.start, s, record.name)
    restart_s = time.monotonic() - started
    await team.reconnect()
    await team.drain(timeout=DRAIN_S)
    return restart_s


def measure(s: Settings, record: Record) -> dict[str, list[float]]:
    facts = json.loads(record.path("facts.json").read_text())
    with tempfile.TemporaryDirectory(prefix="outband-load-bench-") as tmp:
        team = Team(record, facts, Path(tmp))
        passwords = team.enrol()
        sampler = Sampler(record)

        async def both() -> tuple[float, Outcome, str, float]:
            try:
                sending_s = await _steady(team, passwords)
                steady = team.outcome()
                sampler.stop()
                # Before the power cut: this boot's kernel log has the OOM killer's lines, if it ran.
                kernel = await asyncio.to_thread(ssh.command, record, "sudo journalctl -k -b --no-pager", 120, True)
                cut = await _power_cut(team, s, Store(s.dirs.state).require(record.name))
                return sending_s, steady, kernel.stdout, cut
            finally:
                await team.close()

        try:
            sending_s, steady, kernel, restart_s = asyncio.run(both())
        finally:
            sampler.stop()
    after = team.outcome(tags=("load", "cut"))
    return {
        "load_latency_ms": steady.latency_ms,
        "load_acknowledged": [float(steady.acknowledged)],
        "load_refused": [float(len(steady.refused))],
        "load_lost": [float(len(steady.lost))],
        "load_duplicated": [float(len(steady.duplicated))],
        "load_undecryptable": [float(steady.undecryptable)],
        "load_sending_s": [sending_s],
        "load_cpu_peak_pct": [max(sampler.cpu_busy, default=0.0)],
        "load_mem_peak_mb": [max(sampler.mem_used_mb, default=0.0)],
        "load_oom_kills": [float(kernel.count("Out of memory"))],
        "cut_acknowledged": [float(after.acknowledged - steady.acknowledged)],
        "cut_lost": [float(len(after.lost))],
        "cut_duplicated": [float(len(after.duplicated))],
        "cut_restart_s": [restart_s],
    }
