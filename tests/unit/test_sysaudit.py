"""`invoke audit --system`: auditd's records on a launched appliance (a fixture: the output of the
ausearch runs sysaudit.REMOTE makes, recorded after an operator read a secret and changed nginx's
config through sudo) turned into audit events."""

from __future__ import annotations

from pathlib import Path

from appliance import sysaudit

FIXTURE = Path(__file__).parent / "fixtures/audit/ausearch.csv"


def found() -> list:
    return sysaudit.events(FIXTURE.read_text())


def test_an_operators_read_of_a_secret_is_named_with_the_file_and_the_program():
    reads = [e for e in found() if e.event == "secret read"]
    assert [(e.account, e.detail, e.client) for e in reads] == [
        ("outband", "/etc/synapse/secrets/turn", "/usr/bin/cat")
    ]


def test_config_changes_and_the_sudo_commands_behind_them():
    changes = [(e.account, e.detail) for e in found() if e.event == "config changed"]
    assert changes == [("outband", "/etc/nginx/conf.d/x.conf")] * 2
    commands = [e.detail for e in found() if e.event == "sudo"]
    assert "cat /etc/synapse/secrets/turn" in commands and "touch /etc/nginx/conf.d/x.conf" in commands


def test_ssh_sign_ins_are_listed_in_time_order_in_utc():
    events = found()
    assert any(e.event == "ssh sign-in" and e.account == "outband" for e in events)
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert all(e.time.endswith("+00:00") for e in events)


def test_nothing_found_is_no_events():
    assert sysaudit.events("") == []
