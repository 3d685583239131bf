"""Real Matrix clients for the e2e tests: matrix-nio with vodozemac (end-to-end encryption), each
device with its own crypto store, talking to the appliance the way a responder's client does
(HTTPS to matrix.D, the launch's ACME root trusted, D mapped to the appliance's address)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver
from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    LoginResponse,
    MegolmEvent,
    RoomMessagesResponse,
    RoomMessageText,
    SyncResponse,
)

# Up to 100 new events per room in one sync (Synapse's default is 10): fewer gaps to fill under load.
SYNC_FILTER = {"room": {"timeline": {"limit": 100}}}


class PinnedResolver(AbstractResolver):
    """matrix.D → the appliance's loopback address (the operator's DNS knows nothing of D)."""

    def __init__(self, address: str):
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        return [
            {"hostname": host, "host": self.address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
        ]

    async def close(self) -> None:
        pass


class Device:
    """One nio device of one account; it remembers every event it has seen."""

    def __init__(self, facts: dict, user: str, store: Path):
        store.mkdir(parents=True, exist_ok=True)  # the device's crypto store (vodozemac sessions)
        ctx = ssl.create_default_context(cafile=facts["acme_root"])
        self.client = AsyncClient(
            f"https://matrix.{facts['domain']}",
            f"@{user}:{facts['domain']}",
            store_path=str(store),
            # A request may wait on the server's own federation: reading back through a gap makes
            # an emulated server fetch and check a hundred events from another emulated one (62 s
            # seen). nio's default gives up after 60 s.
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True, request_timeout=300),
            ssl=ctx,
        )
        self.ctx, self.address = ctx, facts["address"]
        self.seen: list = []
        self.created_ms = float("inf")
        self.arrived: dict[str, float] = {}  # body → when this device first had it decrypted
        # Gaps not read back yet: (room, the sync's prev_batch, where in `seen` the newer events start)
        self.gaps: list[tuple[str, str, int]] = []

    @property
    def user_id(self) -> str:
        return self.client.user_id

    async def open(self) -> None:
        """The HTTP session (made inside the event loop that will use it)."""
        if self.client.client_session is None:
            self.client.client_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=PinnedResolver(self.address), ssl=self.ctx),
                timeout=aiohttp.ClientTimeout(total=120),
            )

    async def login(self, password: str, name: str) -> None:
        await self.open()
        response = await self.client.login(password, device_name=name)
        assert isinstance(response, LoginResponse), response
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self.created_ms = time.time() * 1000  # from now on, every message must reach this device
        await self.sync()

    async def sync(self, timeout_ms: int = 1000) -> None:
        response = await self.client.sync(timeout=timeout_ms, full_state=not self.seen, sync_filter=SYNC_FILTER)
        if self.client.should_upload_keys:  # one-time keys others claimed: replenished, as clients do
            await self.client.keys_upload()
        if self.client.should_query_keys:
            await self.client.keys_query()
        if self.client.should_claim_keys:
            await self.client.keys_claim(self.client.get_users_for_key_claiming())
        for room_id, room in response.rooms.join.items() if isinstance(response, SyncResponse) else []:
            if room.timeline.limited and room.timeline.prev_batch:
                self.gaps.append((room_id, room.timeline.prev_batch, len(self.seen)))
            self.seen.extend(room.timeline.events)
            self._note(room.timeline.events)
        await self._fill_gaps()
        self._decrypt_late()

    def _decrypt_late(self) -> None:
        """Messages whose room key had not arrived when they did, decrypted now if it has, as clients
        do: a key travels as a to-device message, and one queued for a server that was down can
        reach it after the messages it opens."""
        for i, event in enumerate(self.seen):
            if isinstance(event, MegolmEvent):
                try:
                    self.seen[i] = self.client.decrypt_event(event)
                except EncryptionError:
                    continue
                self._note([self.seen[i]])

    def _note(self, events: list) -> None:
        for event in events:
            if isinstance(event, RoomMessageText):
                self.arrived.setdefault(event.body, time.monotonic())

    async def _fill_gaps(self) -> None:
        """A limited timeline left a gap (more new events than the sync returns at once): read back
        through /messages to the events this device already had, as a client fills the gap, and put
        them where they belong in the timeline. A gap that could not be read now (the request
        failed) is read at the next sync, as a client scrolling up tries again."""
        remaining: list[tuple[str, str, int]] = []
        for room_id, token, at in sorted(self.gaps, key=lambda gap: -gap[2]):  # later gaps first
            older = await self._backfill(room_id, token)
            if older is None:
                remaining.append((room_id, token, at))
                continue
            self.seen[at:at] = older
            self._note(older)
            remaining = [(r, t, a + len(older)) for r, t, a in remaining]  # all of them lie after `at`
        self.gaps = remaining

    async def _backfill(self, room_id: str, token: str) -> list | None:
        """The events between `token` and those this device already had, oldest first; None if the
        server did not answer."""
        known = {getattr(e, "event_id", None) for e in self.seen}
        older: list = []
        while token:
            page = await self.client.room_messages(room_id, start=token, limit=100)
            if not isinstance(page, RoomMessagesResponse):
                return None
            if not page.chunk:
                break
            fresh = [e for e in page.chunk if e.event_id not in known]
            older += fresh
            if len(fresh) < len(page.chunk) or page.end == token:
                break
            token = page.end
        return older[::-1]

    def decrypted(self) -> list[str]:
        return [e.body for e in self.seen if isinstance(e, RoomMessageText) and e.decrypted]

    def undecryptable(self) -> list[MegolmEvent]:
        """Encrypted events this device could not read, of those sent after it existed (history from
        before a device existed is unreadable for it by design: no key backup on this appliance).
        The appliance's clock is this machine's (qemu); a second's margin for the round trip."""
        return [e for e in self.seen if isinstance(e, MegolmEvent) and e.server_timestamp >= self.created_ms - 1000]

    async def send(self, room_id: str, body: str) -> None:
        await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
        )

    async def close(self) -> None:
        await self.client.close()


async def until(check, devices: list[Device], timeout: float = 90) -> None:
    """Sync the devices until `check()` holds (or fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for the clients"
        await asyncio.gather(*(d.sync(500) for d in devices))
