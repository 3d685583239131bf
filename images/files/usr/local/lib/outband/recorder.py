"""The case recorder: the appliance's own Matrix client, which writes every event of every room it
is in into the case folder, decrypted, as it arrives.

- Its account and device are made at first start by recorder-account (root, ExecStartPre): the
  registration's access token is its only credential (no password exists anywhere).
- It joins every room it is invited to; #control invites it when `invoke control-room` makes it.
- Each event becomes one line of events.jsonl: the decrypted event and the raw one as received,
  with the SHA-256 of the line before (a hash chain). Files and images are downloaded, decrypted and
  kept in media/ by the SHA-256 of their content. manifest.json (events, head of the chain, media)
  is signed with the launch's case key after every batch.
- Undecryptable events are recorded as such (with the Megolm session ID), keys are asked for, and
  a later line carries the decryption when the keys arrive.
- The sync token is saved only after the batch's lines are on disk: a restart (or a power cut)
  re-reads from the last saved token, and events already in the record are not written twice.
  When more happened meanwhile than a sync returns (a limited timeline), the gap is read back
  with /messages before the sync's own events, so the record has no holes.
- Access events (sign-ins and failed ones, new devices, resets, deactivations) from Synapse's
  journal, read the way `invoke audit` reads it (access_audit.py, beside this file), are lines of
  the record too (`"type": "outband.access"`, no room); each holds its journal cursor, from which
  the next start follows on.

matrix-nio (with vodozemac) from the image's hash-pinned lock, in /opt/recorder.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

CASE = Path(os.environ.get("OUTBAND_CASE_DIR", "/var/lib/outband/case"))
STATE = Path(os.environ.get("OUTBAND_RECORDER_STATE", "/var/lib/outband/recorder"))
KEYS = Path(os.environ.get("OUTBAND_RECORDER_KEYS", "/etc/outband/recorder"))
HOMESERVER = "http://127.0.0.1:8008"  # Synapse's own listener: no TLS, no DNS, nothing leaves the machine
GENESIS = "0" * 64  # the "previous line" of the first line
MEDIA_TYPES = ("m.image", "m.file", "m.audio", "m.video")
ACCESS_TYPE = "outband.access"
BACKFILL_PAGES = 100  # of 100 events each: the most read back after one absence

log = logging.getLogger("outband-recorder")


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def atomic_write(path: Path, data: bytes, mode: int = 0o640) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


class CaseFolder:
    """The append-only record: events.jsonl (hash-chained), media/, a signed manifest.json."""

    def __init__(self, root: Path, signing_seed: bytes, case: str):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.root, self.case = root, case
        self.key = Ed25519PrivateKey.from_private_bytes(signing_seed)
        (root / "media").mkdir(parents=True, exist_ok=True)
        self.events = root / "events.jsonl"
        self.count, self.head, self.ids = 0, GENESIS, set()
        self.access_cursor: str | None = None  # the journal position of the last access event recorded
        self.devices_seen: set[str] = set()
        self.media: dict[str, int] = {}
        if self.events.exists():
            self._reload()
        for f in (root / "media").iterdir():
            if not f.name.startswith("."):
                self.media[f.name] = f.stat().st_size
        self.pending: list[bytes] = []

    def _reload(self) -> None:
        data = self.events.read_bytes()
        if data and not data.endswith(b"\n"):  # a line cut by a power loss: never acknowledged
            data = data[: data.rfind(b"\n") + 1]
            with open(self.events, "r+b") as f:
                f.truncate(len(data))
        for raw in data.splitlines():
            line = json.loads(raw)
            self.count, self.head = line["seq"], line_hash(raw)
            if line.get("event_id") and not line.get("late"):
                self.ids.add((line["room"], line["event_id"]))
            if line.get("type") == ACCESS_TYPE:
                self.access_cursor = line.get("cursor")
                if (line.get("content") or {}).get("device"):
                    self.devices_seen.add(line["content"]["device"])

    def has(self, room: str, event_id: str) -> bool:
        return (room, event_id) in self.ids

    def add(self, entry: dict[str, Any]) -> None:
        """Queue one line (written by commit())."""
        self.count += 1
        line = canonical({"seq": self.count, "prev": self.head, **entry})
        self.head = line_hash(line)
        self.pending.append(line + b"\n")
        if entry.get("event_id") and not entry.get("late"):
            self.ids.add((entry["room"], entry["event_id"]))

    def store_media(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        if digest not in self.media:
            atomic_write(self.root / "media" / digest, content)
            self.media[digest] = len(content)
        return digest

    def commit(self) -> None:
        """The batch's lines on disk (fsync), then the manifest signed over them."""
        if not self.pending:
            return
        fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, b"".join(self.pending))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.pending = []
        manifest = {
            "case": self.case,
            "events": self.count,
            "head": self.head,
            "media": dict(sorted(self.media.items())),
            "signed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        signature = base64.b64encode(self.key.sign(canonical(manifest))).decode()
        atomic_write(self.root / "manifest.json", canonical({"manifest": manifest, "signature": signature}) + b"\n")


def make_client(session: dict[str, str], store_key: str):
    from nio import AsyncClient, AsyncClientConfig

    class RecordingClient(AsyncClient):
        """Keeps each response's JSON: the record holds every event as the server sent it (nio's
        parsed events drop the ciphertext of what it decrypts)."""

        last_body: dict[str, Any]

        async def parse_body(self, transport_response):
            body = await super().parse_body(transport_response)
            self.last_body = body
            return body

    (STATE / "store").mkdir(parents=True, exist_ok=True)
    client = RecordingClient(
        HOMESERVER,
        session["user_id"],
        device_id=session["device_id"],
        store_path=str(STATE / "store"),
        # The sync token is ours to save (after the record is on disk), not nio's.
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False, pickle_key=store_key),
    )
    client.last_body = {}
    client.restore_login(session["user_id"], session["device_id"], session["access_token"])
    return client


def raw_events(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """event id → the event exactly as this sync delivered it."""
    found = {}
    for room in body.get("rooms", {}).get("join", {}).values():
        for section in ("state", "timeline"):
            for event in room.get(section, {}).get("events", []):
                if "event_id" in event:
                    found[event["event_id"]] = event
    return found


class Recorder:
    def __init__(self, case: CaseFolder, client):
        self.case, self.client = case, client
        self.position = STATE / "position.json"
        saved = json.loads(self.position.read_text()) if self.position.exists() else {}
        self.client.next_batch = saved.get("next_batch")
        self.undecrypted: list[dict[str, Any]] = saved.get("undecrypted", [])  # raw events + room

    def save_position(self) -> None:
        state = {"next_batch": self.client.next_batch, "undecrypted": self.undecrypted}
        atomic_write(self.position, canonical(state), 0o600)

    async def start(self) -> None:
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        await self.client.set_displayname("Case recorder")

    async def once(self) -> None:
        from nio import SyncResponse

        first = self.client.next_batch is None
        response = await self.client.sync(timeout=30_000, full_state=first)
        if not isinstance(response, SyncResponse):
            log.warning("sync failed: %s", getattr(response, "message", response))
            await asyncio.sleep(5)
            return
        raw = raw_events(self.client.last_body)
        if self.client.should_query_keys:
            await self.client.keys_query()
        for room_id, room in response.rooms.join.items():
            for event in room.state:
                await self.record(room_id, event, raw.get(getattr(event, "event_id", None) or ""))
            if room.timeline.limited and room.timeline.prev_batch:
                for event, event_raw in await self.backfill(room_id, room.timeline.prev_batch):
                    await self.record(room_id, event, event_raw)
            for event in room.timeline.events:
                await self.record(room_id, event, raw.get(getattr(event, "event_id", None) or ""))
        await self.retry_undecrypted()
        self.case.commit()
        self.client.next_batch = response.next_batch
        self.save_position()
        # Invitations after the batch is safe: a join's own events arrive in a later sync.
        for room_id in response.rooms.invite:
            log.info("invited to %s: joining", room_id)
            await self.client.join(room_id)

    async def backfill(self, room_id: str, prev_batch: str) -> list[tuple[Any, dict[str, Any] | None]]:
        """A limited timeline: more happened while the recorder was away (stopped, rebooting) than
        a sync returns (Synapse's default: the last 10 events). The events in the gap, read back with
        /messages until one already in the record (or the room's start), oldest first."""
        from nio import MessageDirection, RoomMessagesResponse

        found: list[tuple[Any, dict[str, Any] | None]] = []
        token = prev_batch
        for _ in range(BACKFILL_PAGES):
            response = await self.client.room_messages(room_id, token, direction=MessageDirection.back, limit=100)
            if not isinstance(response, RoomMessagesResponse):
                log.warning("reading back %s failed: %s", room_id, getattr(response, "message", response))
                break
            raw = {e["event_id"]: e for e in self.client.last_body.get("chunk", []) if "event_id" in e}
            reached = False
            for event in response.chunk:
                event_id = getattr(event, "event_id", None) or ""
                if self.case.has(room_id, event_id):
                    reached = True
                    break
                found.append((event, raw.get(event_id)))
            if reached or not response.chunk or not response.end or response.end == token:
                break
            token = response.end
        if found:
            log.info("read back %d events of %s that the sync skipped", len(found), room_id)
        return found[::-1]

    async def record(self, room_id: str, event, raw: dict[str, Any] | None) -> None:
        from nio import MegolmEvent

        if raw is None or self.case.has(room_id, raw["event_id"]):
            return
        entry: dict[str, Any] = {
            "room": room_id,
            "event_id": raw["event_id"],
            "sender": raw.get("sender"),
            "time": raw.get("origin_server_ts"),
            "recorded": int(time.time() * 1000),
            "raw": raw,
        }
        if raw.get("type") == "m.room.encrypted":
            entry["device"] = raw.get("content", {}).get("device_id")
            entry["session_id"] = raw.get("content", {}).get("session_id")
            if isinstance(event, MegolmEvent):
                entry.update(type="m.room.encrypted", undecryptable=True, content=None)
                self.undecrypted.append({"room": room_id, "event": raw})
                await self.ask_for_key(event)
            else:
                decrypted = event.source
                entry.update(type=decrypted.get("type"), content=decrypted.get("content"), encrypted=True)
        else:
            entry.update(type=raw.get("type"), content=raw.get("content"))
            if "state_key" in raw:
                entry["state_key"] = raw["state_key"]
        if entry.get("content"):
            await self.keep_media(entry)
        self.case.add(entry)

    async def ask_for_key(self, event) -> None:
        try:
            await self.client.request_room_key(event)
        except Exception as e:
            log.info("key request for %s: %s", event.session_id, e)

    async def keep_media(self, entry: dict[str, Any]) -> None:
        from nio.crypto.attachments import decrypt_attachment

        content = entry["content"]
        if content.get("msgtype") not in MEDIA_TYPES:
            return
        file = content.get("file")
        url = file["url"] if file else content.get("url")
        if not url:
            return
        response = await self.client.download(mxc=url)
        body = getattr(response, "body", None)
        if body is None:
            entry["media"] = {"error": getattr(response, "message", "download failed"), "url": url}
            return
        try:
            plain = decrypt_attachment(body, file["key"]["k"], file["hashes"]["sha256"], file["iv"]) if file else body
        except Exception as e:
            entry["media"] = {"error": f"cannot decrypt: {e}", "url": url}
            return
        entry["media"] = {"sha256": self.case.store_media(plain), "size": len(plain), "url": url}

    async def retry_undecrypted(self) -> None:
        """Events whose keys have arrived since: a line with their decryption (marked late)."""
        from nio import Event, MegolmEvent

        still = []
        for item in self.undecrypted:
            parsed = Event.parse_event(item["event"])
            decrypted = None
            if isinstance(parsed, MegolmEvent):
                parsed.room_id = item["room"]  # a sync's events carry no room id; nio's decryption needs it
                try:
                    decrypted = self.client.decrypt_event(parsed)
                except Exception:
                    decrypted = None
            if decrypted is None or isinstance(decrypted, MegolmEvent):
                still.append(item)
                continue
            entry = {
                "room": item["room"],
                "event_id": parsed.event_id,
                "late": True,
                "sender": parsed.sender,
                "time": parsed.server_timestamp,
                "recorded": int(time.time() * 1000),
                "type": decrypted.source.get("type"),
                "content": decrypted.source.get("content"),
                "encrypted": True,
                "session_id": parsed.session_id,
            }
            await self.keep_media(entry)
            self.case.add(entry)
        self.undecrypted = still


class AccessFollower:
    """Synapse's journal, followed (journalctl -f, one process for the recorder's life: no polling),
    each access event a line of the record. The recorder reads the journal as a member of
    systemd-journal (its unit), nothing more."""

    def __init__(self, case: CaseFolder, domain: str):
        import access_audit  # beside this file: the same reading as `invoke audit`

        self.case = case
        self.reader = access_audit.Reader(domain, case.devices_seen)

    def argv(self) -> list[str]:
        since = ["--after-cursor", self.case.access_cursor] if self.case.access_cursor else ["-n", "all"]
        return ["journalctl", "-u", "synapse.service", "-o", "json", "--no-pager", "-f", *since]

    def record(self, raw: bytes) -> None:
        text = raw.decode(errors="replace")
        try:
            cursor = json.loads(text).get("__CURSOR")
        except ValueError:
            return
        for event in self.reader.feed([text]):
            entry = event.as_dict()
            when = datetime.datetime.fromisoformat(entry["time"]).timestamp()  # UTC, from the journal
            self.case.add(
                {
                    "room": None,
                    "type": ACCESS_TYPE,
                    "sender": entry["account"],
                    "device": entry["device"] or None,
                    "time": int(when * 1000),
                    "recorded": int(time.time() * 1000),
                    "content": entry,
                    "cursor": cursor,
                }
            )
            self.case.commit()

    async def run(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.argv(),
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 22,  # its errors: the recorder's journal
            )
            assert proc.stdout is not None
            async for raw in proc.stdout:
                self.record(raw)
            status = await proc.wait()
            failures = failures + 1 if time.monotonic() - started < 30 else 0
            if failures >= 5:  # not a hiccup: fail the unit, so that `invoke verify` shows it
                raise RuntimeError(f"journalctl keeps ending at once (exit {status}): no access events are recorded")
            log.warning("journalctl ended (%s): following again in 5 s", status)
            await asyncio.sleep(5)


async def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("nio").setLevel(logging.WARNING)
    session = json.loads((STATE / "session.json").read_text())
    seed = base64.b64decode((KEYS / "case.key").read_text().strip() + "==")
    case = CaseFolder(CASE, seed, session["user_id"].split(":", 1)[1])
    client = make_client(session, (KEYS / "store.key").read_text().strip())
    recorder = Recorder(case, client)
    await recorder.start()
    log.info("recording as %s (device %s), %d events so far", session["user_id"], session["device_id"], case.count)
    follower = asyncio.create_task(AccessFollower(case, session["user_id"].split(":", 1)[1]).run())
    try:
        while True:
            await recorder.once()
            if follower.done():  # its failure is the recorder's: systemd restarts both
                follower.result()
    finally:
        follower.cancel()
        await client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
