"""The access audit's reading of Synapse's journal (a fixture recorded from a launched appliance:
accounts made, the operator acting for the lead, browser sign-ins, a reset, failed sign-ins, a
deactivation)."""

from __future__ import annotations

from pathlib import Path

from appliance import audit

JOURNAL = Path(__file__).parent / "fixtures/audit/journal.jsonl"
DOMAIN = "dev.outband.test"


def kinds() -> list[tuple[str, str]]:
    return [(e.event, e.account.split(":")[0]) for e in audit.events(JOURNAL.read_text().splitlines(), DOMAIN)]


def test_each_kind_of_event_is_read_with_who_and_from_where():
    found = list(audit.events(JOURNAL.read_text().splitlines(), DOMAIN))
    by_kind = {e.event: e for e in found}
    browser = by_kind["sign-in, new device"]
    assert browser.account == f"@fox:{DOMAIN}" and browser.device and browser.address == "10.0.2.2"
    assert "HeadlessChrome" in browser.client
    failed = [e for e in found if e.event == "sign-in failed"]
    assert [(e.account, e.detail) for e in failed] == [(f"@fox:{DOMAIN}", ""), (f"@nobody:{DOMAIN}", "no such account")]
    assert by_kind["password reset"].account == f"@owl:{DOMAIN}" and "outband-admin" in by_kind["password reset"].detail
    assert by_kind["deactivated"].account == f"@mole:{DOMAIN}"
    assert by_kind["operator acted as"].account == f"@lead:{DOMAIN}"


def test_events_come_in_the_order_their_requests_ended():
    order = [k for k, _ in kinds()]
    assert order.index("password reset") < order.index("sign-in failed") < order.index("deactivated")
    assert [a for k, a in kinds() if k.startswith("account created")][:3] == ["@lead", "@fox", "@owl"]


def test_a_device_is_new_only_the_first_time_it_is_seen():
    devices = [e.device for e in audit.events(JOURNAL.read_text().splitlines(), DOMAIN) if e.device]
    assert len(devices) == len(set(devices))


def test_unrelated_and_foreign_lines_make_no_events():
    assert list(audit.events(['{"MESSAGE": "Started synapse"}', "not json", '{"MESSAGE": [104, 105]}'], DOMAIN)) == []


def test_device_names_come_from_the_admin_api_where_the_device_exists():
    found = list(audit.events(JOURNAL.read_text().splitlines(), DOMAIN))
    named = audit.name_devices(found, {found[0].device: "lead's laptop"})
    assert named[0].device_name == "lead's laptop" and all(e.device_name == "" for e in named[1:])
