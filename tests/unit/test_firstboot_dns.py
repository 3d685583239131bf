"""First boot waits for DNS before it asks for a certificate (a cloud makes the records only once
the machine has its address): the appliance's side of the DigitalOcean target's defect 3."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import load_script

firstboot = load_script("images/files/usr/local/lib/outband/firstboot.py", "firstboot_dns")
CONTRACT = {"domain": "chat.example.org", "public_ip": "203.0.113.7", "acme": {"await_dns": True}}


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(firstboot.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(firstboot.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now


def test_it_waits_until_every_name_points_here(monkeypatch, clock, capsys):
    answers = iter([["(NXDOMAIN)"]] * 8 + [["203.0.113.7"]] * 8)
    monkeypatch.setattr(firstboot, "dns_a", lambda name: next(answers))
    firstboot.await_dns(CONTRACT)
    out = capsys.readouterr().out
    assert "progress: waiting for DNS (chat.example.org → (NXDOMAIN)" in out
    assert out.count("waiting for DNS") == 1  # reported when what DNS says changes, not every try
    assert "every name resolves to 203.0.113.7" in out
    assert clock[0] > 0


def test_a_stale_record_is_not_good_enough(monkeypatch, clock):
    monkeypatch.setattr(firstboot, "dns_a", lambda name: ["198.51.100.9"])
    with pytest.raises(SystemExit, match=r"did not point every name at 203\.0\.113\.7"):
        firstboot.await_dns(CONTRACT)
    assert clock[0] >= firstboot.DNS_WAIT_SECONDS  # bounded


def test_dns_is_asked_without_hosts_file_or_cache(monkeypatch):
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        out = (
            "matrix.chat.example.org: 203.0.113.7                   -- link: eth0\n"
            "                         203.0.113.8                   -- link: eth0\n"
        )
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(firstboot.subprocess, "run", run)
    assert firstboot.dns_a("matrix.chat.example.org") == ["203.0.113.7", "203.0.113.8"]
    assert {"--synthesize=no", "--cache=no", "-4"} <= set(calls[0])

    monkeypatch.setattr(
        firstboot.subprocess,
        "run",
        lambda argv, **kw: subprocess.CompletedProcess(
            argv, 1, "", "matrix.chat.example.org: resolve call failed: 'matrix.chat.example.org' not found\n"
        ),
    )
    assert firstboot.dns_a("matrix.chat.example.org") == ["(resolve call failed: 'matrix.chat.example.org' not found)"]
