"""Issue 18: #control across servers. The session's two appliances become a team the way an
operator makes one (`invoke federate`, `invoke control-room --servers`); responders on each talk
end to end encrypted; one server is powered off hard and the team keeps talking; when it is back it
catches up. Before that, the second appliance, not yet in the first one's team, is the server
outside the whitelist: it can neither join nor read #control.

Runs last (after test_survive): both appliances are the session's, launched already.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from urllib.parse import quote

import pytest

from appliance import https, qemu
from tests.e2e import clients
from tests.e2e.conftest import facts, invoke
from tests.infra.federation import keys_fetched_by

pytestmark = pytest.mark.vm
A, B = "e2e-a", "e2e-b"
DOWN_MESSAGES = 6  # sent on A while B is powered off
MEMBERS = "ana,ada,cat,bob,yak"  # ana leads on A, bob on B


def password(name: str, appliance: str, *extra: str) -> str:
    result = invoke("user.add", name, "--name", appliance, *extra)
    return re.search(r"^password: (\S+)$", result.stdout, re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def sides(journey_appliance, second_appliance) -> dict:
    return {"a": facts(journey_appliance), "b": facts(second_appliance)}


@pytest.fixture(scope="module")
def passwords(sides) -> dict[str, str]:
    """A lead and two responders on A, a lead and a responder on B, and eve on B."""
    return {
        "ana": password("ana", A, "--admin"),
        "ada": password("ada", A),
        "cat": password("cat", A),
        "bob": password("bob", B, "--admin"),
        "yak": password("yak", B),
        "eve": password("eve", B),
    }


@pytest.fixture(scope="module")
def control_on_a(passwords) -> str:
    """A's #control (the journey's, or made here when this file runs alone), with ana in it."""
    made = invoke("control-room", "--name", A, "--members", "ana")
    return re.search(r"\((![^)]+)\)", made.stdout).group(1)


@pytest.fixture(scope="module")
def outsider(loop, journey_appliance, sides, passwords, control_on_a, tmp_path_factory):
    """eve, on B, before B is in A's team. B itself may talk to A (its own list names A, by server
    name: A is not changed), so what refuses her is A's whitelist."""
    invoke("federate", "--name", B, "--with", sides["a"]["domain"])
    assert sides["b"]["domain"] not in facts(journey_appliance)["federation"]["servers"]
    device = clients.Device(sides["b"], "eve", tmp_path_factory.mktemp("eve"))

    async def go() -> None:
        await device.login(passwords["eve"], "eve (nio)")

    loop.run(go())
    yield device
    loop.run(device.close())


def control_room_id(a: dict) -> str:
    """#control's ID, looked up on A as anyone may (the room directory needs no account)."""
    alias = f"#control:{a['domain']}"
    r = https.request(
        a["address"], 443, f"matrix.{a['domain']}", f"/_matrix/client/v3/directory/room/{quote(alias)}", a["acme_root"]
    )
    assert r.status == 200, r.body[:200]
    return r.json()["room_id"]


def test_a_server_outside_the_team_can_neither_join_nor_read_control(loop, sides, outsider, control_on_a):
    a = sides["a"]
    room_id = control_room_id(a)
    assert room_id == control_on_a

    async def attempt() -> tuple:
        await outsider.open()
        by_alias = await outsider.client.join(f"#control:{a['domain']}")
        by_id = await outsider.client.join(room_id)  # the ID, as an insider might pass it on
        messages = await outsider.client.room_messages(room_id, start="", limit=10)
        return by_alias, by_id, messages

    by_alias, by_id, messages = loop.run(attempt())
    assert not hasattr(by_alias, "room_id") and not hasattr(by_id, "room_id"), (by_alias, by_id)  # JoinErrors
    assert not hasattr(messages, "chunk"), messages  # a RoomMessagesError: nothing to read
    # A refuses to contact B at all (its whitelist, outgoing), though B is up and reachable,
    assert keys_fetched_by(a, sides["b"]["domain"]) == []
    # while B, which lists A, reaches A: what refused eve is A's list, not the network.
    assert keys_fetched_by(sides["b"], a["domain"])


@pytest.fixture(scope="module")
def team(loop, sides, passwords, outsider, tmp_path_factory):
    """The team as an operator makes it: A takes B in (and B, an appliance here, takes A), then
    #control spans both with a lead and a responder on each, the two verified."""
    made = invoke("federate", "--name", A, "--with", B)
    assert sides["b"]["domain"] in made.stdout
    # B was used alone before it joined (as test_survive's team did): it has a #control of its own.
    alone = re.search(r"\((![^)]+)\)", invoke("control-room", "--name", B, "--members", "bob").stdout).group(1)
    room = invoke("control-room", "--name", A, "--members", MEMBERS, "--servers", f"{A},{B}")
    room_id = re.search(r"\((![^)]+)\)", room.stdout).group(1)
    assert f"named {alone}, a room of that server alone: it now names the team's" in room.stdout, room.stdout
    devices = {
        who: clients.Device(sides["a" if who in ("ada", "cat") else "b"], who, tmp_path_factory.mktemp(who))
        for who in ("ada", "cat", "yak")
    }

    async def join() -> None:
        for who, device in devices.items():
            await device.login(passwords[who], f"{who} (nio)")
            await device.client.join(room_id)
        await asyncio.gather(*(d.sync() for d in devices.values()))

    loop.run(join())
    yield {"room_id": room_id, "devices": devices, "control_room": room.stdout}

    async def close() -> None:
        await asyncio.gather(*(d.close() for d in devices.values()))

    loop.run(close())


def test_both_teams_lists_hold_each_other_and_verify_passes(journey_appliance, second_appliance, sides, team):
    both = sorted([sides["a"]["domain"], sides["b"]["domain"]])
    for record in (journey_appliance, second_appliance):
        assert facts(record)["federation"]["servers"] == both  # what `invoke federate` changed in place
        verified = invoke("verify", "--name", record.name, check=False)  # reaching the other included
        assert verified.returncode == 0, verified.stdout[-3000:]


def test_control_spans_both_servers_with_a_lead_at_100_on_each(sides, team):
    rows = {r["account"]: r for r in json.loads(invoke("room.members", "--name", A, "--json").stdout)}
    b = sides["b"]["domain"]
    assert rows[f"@bob:{b}"]["membership"] == "join" and rows[f"@bob:{b}"]["power"] == "100"
    assert rows[f"@outband-recorder:{b}"]["membership"] == "join"  # B records #control too
    assert rows[f"@yak:{b}"]["membership"] == "join"
    # The alias on B names the same room; a second run changes nothing.
    on_b = {r["account"] for r in json.loads(invoke("room.members", "--name", B, "--json").stdout)}
    assert on_b == set(rows)
    again = invoke("control-room", "--name", A, "--members", MEMBERS, "--servers", f"{A},{B}")
    assert "invited: nobody new" in again.stdout


def test_encrypted_messages_cross_in_both_directions(loop, team):
    ada, cat, yak = (team["devices"][w] for w in ("ada", "cat", "yak"))
    room_id = team["room_id"]

    async def talk() -> None:
        await ada.send(room_id, "from A: the firewall logs are in")
        await yak.send(room_id, "from B: read, on it")
        await clients.until(
            lambda: "from B: read, on it" in ada.decrypted() and "from A: the firewall logs are in" in yak.decrypted(),
            [ada, cat, yak],
            timeout=180,
        )

    loop.run(talk())
    assert not any(d.undecryptable() for d in (ada, cat, yak))


def test_with_one_server_powered_off_the_team_goes_on_and_it_catches_up(loop, second_appliance, team):
    ada, cat, yak = (team["devices"][w] for w in ("ada", "cat", "yak"))
    room_id = team["room_id"]
    down = [f"while B is down {i}" for i in range(DOWN_MESSAGES)]

    async def outage() -> None:
        pid = int(json.loads(second_appliance.file.read_text())["data"]["pid"])
        os.kill(pid, signal.SIGKILL)  # the power, not a shutdown
        for i, body in enumerate(down):
            await (ada if i % 2 == 0 else cat).send(room_id, body)
        await clients.until(lambda: all(m in ada.decrypted() and m in cat.decrypted() for m in down), [ada, cat])
        await asyncio.to_thread(invoke, "start", "--name", B)
        # yak's client reconnects, as a laptop's does when its server is back.
        await yak.client.client_session.close()
        yak.client.client_session = None
        await yak.open()
        await clients.until(lambda: all(m in yak.decrypted() for m in down), [yak], timeout=420)
        await yak.send(room_id, "from B: back")
        await clients.until(lambda: all("from B: back" in d.decrypted() for d in (ada, cat, yak)), [ada, cat, yak])

    loop.run(outage())
    assert qemu.alive(int(json.loads(second_appliance.file.read_text())["data"]["pid"]))
    seen = [m for m in yak.decrypted() if m in down]
    assert seen == down, seen  # every one, once, in the order sent
    for device in (ada, cat, yak):
        assert not device.undecryptable(), device.undecryptable()[:3]
        assert device.decrypted().count("from B: back") == 1
