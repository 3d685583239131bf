"""Benchmark (run by `invoke bench --federation`, not by the test suite): #control across two
appliances (issue 18). A second appliance joins the bench's own as a team (`--federate-with`),
#control spans both (`control-room --servers`), and a matrix-nio device on each measures:

- a message sent on one server → decrypted on the other, both ways (sent one after another, each
  waited for: the path's own latency, not a queue's);
- a server powered off hard while N messages are sent on the other; after `invoke start`, the time
  until its responder has every one of them decrypted, in order (federation catch-up, then the
  client's backfill through the gap).

Both appliances and the clients share this machine's cores: under TCG the figures are the
emulator's as much as Synapse's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from appliance import launch, matrix, teamops
from appliance.config import Settings
from appliance.state import Record, Store
from tests.e2e import clients

PEER = "bench-b"
ROUND_TRIPS = 30  # messages each way for the latency
MISSED = 200  # sent while the peer is down


def _account(record: Record, name: str, admin: bool) -> str:
    password = matrix.new_password()
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        api.logout(api.register(matrix.shared_secret(record), name, password, admin=admin)["access_token"])
    return password


def _facts(record: Record) -> dict:
    return json.loads(record.path("facts.json").read_text())


async def _latency(sender: clients.Device, receiver: clients.Device, room: str, tag: str) -> list[float]:
    sent: dict[str, float] = {}
    for i in range(ROUND_TRIPS):
        body = f"{tag} {i}"
        sent[body] = time.monotonic()
        await sender.send(room, body)
        await clients.until(lambda body=body: body in receiver.arrived, [receiver], timeout=120)
    return [(receiver.arrived[b] - t) * 1000 for b, t in sent.items()]


async def _outage(s: Settings, ana: clients.Device, bob: clients.Device, room: str, peer: Record) -> dict:
    missed = [f"missed {i}" for i in range(MISSED)]
    os.kill(int(json.loads(peer.file.read_text())["data"]["pid"]), signal.SIGKILL)
    for body in missed:
        await ana.send(room, body)
    await asyncio.to_thread(launch.start, s, PEER)
    back = time.monotonic()
    await bob.client.client_session.close()
    bob.client.client_session = None
    await bob.open()
    await clients.until(lambda: all(m in bob.arrived for m in missed), [bob], timeout=1800)
    caught_up = time.monotonic() - back
    order = [m for m in bob.decrypted() if m.startswith("missed ")]
    return {
        "federation_catch_up_s": [caught_up],
        "federation_catch_up_missing": [float(len(set(missed) - set(order)))],
        "federation_catch_up_out_of_order": [float(order != missed)],
        "federation_catch_up_duplicated": [float(len(order) - len(set(order)))],
    }


def measure(s: Settings, record: Record) -> dict[str, list[float]]:
    store = Store(s.dirs.state)
    if store.get(PEER):
        launch.destroy(s, PEER, yes=True, discard_record=True)
    peer = launch.launch(s, PEER, None, record.data["image"], federate_with=(record.name,))
    try:
        passwords = {"ana": _account(record, "ana", True), "bob": _account(peer, "bob", True)}
        teamops.control_room(s, record.name, ["ana", "bob"], None, [record.name, PEER])
        with tempfile.TemporaryDirectory(prefix="outband-bench-federation-") as work:
            ana = clients.Device(_facts(record), "ana", Path(work) / "ana")
            bob = clients.Device(_facts(peer), "bob", Path(work) / "bob")

            async def run() -> dict[str, list[float]]:
                try:
                    await ana.login(passwords["ana"], "ana (bench)")
                    await bob.login(passwords["bob"], "bob (bench)")
                    resolved = await ana.client.room_resolve_alias(f"#control:{record.data['domain']}")
                    room = resolved.room_id
                    await bob.client.join(room)
                    await asyncio.gather(ana.sync(), bob.sync())
                    results = {
                        "federation_a_to_b_ms": await _latency(ana, bob, room, "a to b"),
                        "federation_b_to_a_ms": await _latency(bob, ana, room, "b to a"),
                    }
                    results.update(await _outage(s, ana, bob, room, store.require(PEER)))
                    results["federation_undecryptable"] = [float(len(ana.undecryptable()) + len(bob.undecryptable()))]
                    return results
                finally:
                    await asyncio.gather(ana.close(), bob.close())

            return asyncio.run(run())
    finally:
        launch.destroy(s, PEER, yes=True, discard_record=True)
