"""Benchmark (run by `invoke bench --case`, not by the test suite): the case recorder under a
conversation of 1,000 encrypted messages and 20 encrypted files from a matrix-nio client, on a
launched appliance, then `invoke case.export` of all of it.

Recording lag is the appliance's own clock twice: the event's origin_server_ts (Synapse stamps it
when it accepts the send) and the line's `recorded` time (when the recorder queued it for the
batch it writes at once): no clock skew between machines enters it.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from pathlib import Path

from appliance import case, matrix
from appliance.config import Settings
from appliance.state import Record
from tests.e2e import clients

MESSAGES = 1000
FILES = 20


def _room(record: Record) -> tuple[str, str]:
    """An account and an encrypted room (Megolm's default rotation, not #control's per-message one),
    with the recorder invited, as `control-room` does it."""
    password = matrix.new_password()
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        api.logout(api.register(matrix.shared_secret(record), "bench-case", password, admin=False)["access_token"])
    return password, api.user_id(matrix.RECORDER_ACCOUNT)


async def _converse(facts: dict, password: str, recorder: str, work: Path) -> str:
    owl = clients.Device(facts, "bench-case", work / "nio")
    try:
        await owl.login(password, "bench case")
        created = await owl.client.room_create(
            name="case bench",
            invite=[recorder],
            initial_state=[
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ],
        )
        room = created.room_id

        def joined() -> bool:
            found = owl.client.rooms.get(room)
            return found is not None and recorder in found.users

        await clients.until(joined, [owl], timeout=120)
        for i in range(MESSAGES):
            await owl.send(room, f"case bench message {i}")
            if i % (MESSAGES // FILES) == 0:
                data = f"evidence file {i}\n".encode() * 2000
                uploaded, keys = await owl.client.upload(
                    io.BytesIO(data),
                    content_type="application/octet-stream",
                    filename=f"f{i}.bin",
                    encrypt=True,
                    filesize=len(data),
                )
                content = {"msgtype": "m.file", "body": f"f{i}.bin", "file": {"url": uploaded.content_uri, **keys}}
                await owl.client.room_send(room, "m.room.message", content, ignore_unverified_devices=True)
        return room
    finally:
        await owl.close()


def measure(s: Settings, record: Record) -> dict[str, list[float]]:
    facts = json.loads(record.path("facts.json").read_text())
    password, recorder = _room(record)
    with tempfile.TemporaryDirectory(prefix="outband-case-bench-") as tmp:
        work = Path(tmp)
        room = asyncio.run(_converse(facts, password, recorder, work))
        wanted = MESSAGES + FILES
        deadline = time.monotonic() + 600
        while True:  # until the recorder has written the last message
            doc = case.remote_manifest(record)
            if doc and doc["manifest"]["events"] >= wanted:
                started = time.monotonic()
                case.export(s, record.name, work / "export")
                export_s = time.monotonic() - started
                lines = [json.loads(x) for x in (work / "export" / "events.jsonl").read_text().splitlines()]
                mine = [x for x in lines if x["room"] == room and x["type"] == "m.room.message"]
                if len(mine) >= wanted:
                    break
            assert time.monotonic() < deadline, "the recorder did not record the bench's messages"
            time.sleep(5)
    lag = [float(x["recorded"] - x["time"]) for x in mine]
    undecrypted = [x for x in lines if x.get("undecryptable")]
    return {"case_lag_ms": lag, "case_export_s": [export_s], "case_undecryptable": [float(len(undecrypted))]}
