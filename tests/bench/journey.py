"""Benchmark (run by `invoke bench --journey`, not by the test suite): a responder's sign-in in a real
browser and end-to-end encrypted messages between the browser and a matrix-nio device, on a
launched appliance. Times are wall-clock on this machine; the appliance runs under TCG here."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from appliance import matrix
from appliance.state import Record
from tests.e2e import clients
from tests.e2e.browser import Browsers, trusting_home

MESSAGES = 50


def _team(record: Record) -> tuple[dict[str, str], str]:
    """Accounts and #control, made as `invoke user.add` / `invoke control-room` make them."""
    passwords = {}
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        for name, admin in (("bench-lead", True), ("bench-fox", False), ("bench-owl", False)):
            passwords[name] = matrix.new_password()
            api.logout(api.register(matrix.shared_secret(record), name, passwords[name], admin=admin)["access_token"])
        ids = [api.user_id(n) for n in passwords]
        room_id, _, _ = matrix.ensure_control_room(api, ids[0], ids, ids[:1])
    return passwords, room_id


async def _measure(facts: dict, passwords: dict[str, str], room: str, work: Path) -> dict[str, list[float]]:
    browsers = Browsers(trusting_home(work / "home", facts["acme_root"]), facts["domain"], facts["address"], work)
    await browsers.start()
    fox = await browsers.responder("bench-fox")
    owl = clients.Device(facts, "bench-owl", work / "owl")
    try:
        sign_in = await fox.sign_in("bench-fox", passwords["bench-fox"])
        await fox.open_control()
        await owl.login(passwords["bench-owl"], "bench owl")
        await owl.client.join(room)
        await fox.send("warm-up")
        await clients.until(lambda: "warm-up" in owl.decrypted(), [owl])
        to_nio, to_browser = [], []
        for i in range(MESSAGES):
            body = f"browser to nio {i}"
            started = time.monotonic()
            await fox.send(body)
            await clients.until(lambda body=body: body in owl.decrypted(), [owl])
            to_nio.append((owl.arrived[body] - started) * 1000)
        for i in range(MESSAGES):
            body = f"nio to browser {i}"
            started = time.monotonic()
            await owl.send(room, body)
            assert await fox.sees(body)
            to_browser.append((time.monotonic() - started) * 1000)
        return {
            "journey_sign_in_s": [sign_in],
            "journey_browser_to_nio_ms": to_nio,
            "journey_nio_to_browser_ms": to_browser,
        }
    finally:
        await owl.close()
        await fox.close()
        await browsers.stop()


def measure(record: Record) -> dict[str, list[float]]:
    facts = json.loads(record.path("facts.json").read_text())
    passwords, room = _team(record)
    with tempfile.TemporaryDirectory(prefix="outband-bench-journey-") as work:
        return asyncio.run(_measure(facts, passwords, room, Path(work)))
