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
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
            ssl=ctx,
        )
        self.ctx, self.address = ctx, facts["address"]
        self.seen: list = []
        self.created_ms = float("inf")
        self.arrived: dict[str, float] = {}  # body → when this device first had it decrypted

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
            events = list(room.timeline.events)
            if room.timeline.limited and room.timeline.prev_batch:
                events = await self._backfill(room_id, room.timeline.prev_batch) + events
            for event in events:
                self.seen.append(event)
                if isinstance(event, RoomMessageText):
                    self.arrived.setdefault(event.body, time.monotonic())

    async def _backfill(self, room_id: str, token: str) -> list:
        """A limited timeline left a gap (more new events than the sync returns at once): read back
        through /messages to the events this device already had, as a client fills the gap."""
        known = {getattr(e, "event_id", None) for e in self.seen}
        older: list = []
        while token:
            page = await self.client.room_messages(room_id, start=token, limit=100)
            if not isinstance(page, RoomMessagesResponse) or not page.chunk:
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
