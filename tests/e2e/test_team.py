"""Team operations with real clients: accounts via the shared-secret admin API, #control, matrix-nio
(vodozemac) exchanging end-to-end encrypted messages and a file, deactivation, the access audit."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from nio import AsyncClient, AsyncClientConfig, LoginResponse, RoomMessageText, UploadResponse
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from tests.e2e.conftest import invoke

pytestmark = pytest.mark.vm
APPLIANCE = "e2e-a"


class PinnedResolver(AbstractResolver):
    """matrix.D → the appliance's loopback address (the operator's DNS knows nothing of D)."""

    def __init__(self, address: str):
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


def client(facts: dict, user: str, store: Path) -> AsyncClient:
    store.mkdir(parents=True, exist_ok=True)  # nio's crypto store (vodozemac sessions) lives here
    ctx = ssl.create_default_context(cafile=facts["acme_root"])
    c = AsyncClient(
        f"https://matrix.{facts['domain']}",
        f"@{user}:{facts['domain']}",
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        ssl=ctx,
    )
    c.client_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=PinnedResolver(facts["address"]), ssl=ctx),
        timeout=aiohttp.ClientTimeout(total=120),
    )
    return c


def knows(c: AsyncClient, other: AsyncClient, room_id: str) -> bool:
    """c sees other joined in the room and knows other's current device."""
    room = c.rooms.get(room_id)
    devices = {d.id for d in c.device_store.active_user_devices(other.user_id)}
    return room is not None and other.user_id in room.users and other.device_id in devices


def add_user(name: str, *extra: str) -> str:
    result = invoke("user.add", name, "--name", APPLIANCE, *extra)
    return re.search(r"^password: (\S+)$", result.stdout, re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def team(launched):
    facts = json.loads(launched[APPLIANCE].path("facts.json").read_text())
    passwords = {"alice": add_user("alice", "--admin"), "bob": add_user("bob"), "mallory": add_user("mallory")}
    return facts, passwords


def test_user_add_refuses_bad_and_taken_names(team):
    bad = invoke("user.add", "Not_Valid", "--name", APPLIANCE, check=False)
    assert bad.returncode == 2 and "invalid user name" in bad.stderr
    taken = invoke("user.add", "bob", "--name", APPLIANCE, check=False)
    assert taken.returncode == 2 and "already exists" in taken.stderr


def test_user_list_shows_the_accounts(team):
    listing = invoke("user.list", "--name", APPLIANCE).stdout
    for name in ("alice", "bob", "mallory"):
        assert f"@{name}:" in listing


def test_control_room_is_idempotent(team):
    first = invoke("control-room", "--members", "alice,bob", "--name", APPLIANCE).stdout
    assert "#control:" in first
    again = invoke("control-room", "--members", "alice,bob", "--name", APPLIANCE).stdout
    assert "nobody new" in again
    unknown = invoke("control-room", "--members", "alice,nobody", "--name", APPLIANCE, check=False)
    assert unknown.returncode == 2 and "no such active user" in unknown.stderr


async def _exchange(facts: dict, passwords: dict, tmp: Path) -> dict:
    alice = client(facts, "alice", tmp / "alice")
    bob = client(facts, "bob", tmp / "bob")
    try:
        for c, name in ((alice, "alice"), (bob, "bob")):
            assert isinstance(await c.login(passwords[name], device_name=f"e2e-{name}"), LoginResponse)
            if c.should_upload_keys:  # publish this device's identity and one-time keys
                await c.keys_upload()
            await c.sync(timeout=3000)
        room_id = (await alice.room_resolve_alias(f"#control:{facts['domain']}")).room_id
        for c in (alice, bob):
            await c.join(room_id)
        # Send only once each side knows the other's membership and device keys: megolm room keys
        # are shared with the devices known at send time.
        for _ in range(30):
            for c in (alice, bob):
                await c.sync(timeout=1000)
                if c.should_query_keys:
                    await c.keys_query()
            if all(knows(c, other, room_id) for c, other in ((alice, bob), (bob, alice))):
                break
        assert knows(alice, bob, room_id) and knows(bob, alice, room_id)
        assert alice.rooms[room_id].encrypted and bob.rooms[room_id].encrypted

        await alice.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "status: containment"},
            ignore_unverified_devices=True,
        )
        await bob.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "ack from bob"}, ignore_unverified_devices=True
        )
        payload = b"incident timeline\n" * 100
        ciphertext, keys = encrypt_attachment(payload)
        upload, _ = await bob.upload(
            lambda *_: ciphertext,
            content_type="application/octet-stream",
            filename="timeline.txt",
            encrypt=False,
            filesize=len(ciphertext),
        )
        assert isinstance(upload, UploadResponse)
        await bob.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.file",
                "body": "timeline.txt",
                "file": {"url": upload.content_uri, "mimetype": "text/plain", "v": "v2", **keys},
            },
            ignore_unverified_devices=True,
        )

        seen: dict[str, list] = {"alice": [], "bob": []}
        for _ in range(10):
            for c, name in ((alice, "alice"), (bob, "bob")):
                response = await c.sync(timeout=2000)
                for event in (
                    response.rooms.join.get(room_id, None).timeline.events if room_id in response.rooms.join else []
                ):
                    seen[name].append(event)
            if any(isinstance(e, RoomMessageText) and e.body == "status: containment" for e in seen["bob"]) and any(
                getattr(e, "source", {}).get("content", {}).get("msgtype") == "m.file" for e in seen["alice"]
            ):
                break
        file_event = next(e for e in seen["alice"] if e.source.get("content", {}).get("msgtype") == "m.file")
        info = file_event.source["content"]["file"]
        downloaded = await alice.download(info["url"])
        plain = decrypt_attachment(downloaded.body, info["key"]["k"], info["hashes"]["sha256"], info["iv"])
        return {"seen": seen, "file": plain, "payload": payload}
    finally:
        for c in (alice, bob):
            await c.close()


def test_members_exchange_encrypted_messages_and_a_file(team, tmp_path):
    facts, passwords = team
    result = asyncio.run(_exchange(facts, passwords, tmp_path))
    # nio marks the events it decrypted from m.room.encrypted: the text travelled end-to-end encrypted.
    bob_got = [e.body for e in result["seen"]["bob"] if isinstance(e, RoomMessageText) and e.decrypted]
    alice_got = [e.body for e in result["seen"]["alice"] if isinstance(e, RoomMessageText) and e.decrypted]
    assert "status: containment" in bob_got
    assert "ack from bob" in alice_got
    assert result["file"] == result["payload"]


async def _login(facts: dict, user: str, password: str, tmp: Path) -> object:
    c = client(facts, user, tmp)
    try:
        return await c.login(password)
    finally:
        await c.close()


def test_a_deactivated_user_cannot_log_in(team, tmp_path):
    facts, passwords = team
    invoke("user.deactivate", "mallory", "--erase", "--name", APPLIANCE)
    response = asyncio.run(_login(facts, "mallory", passwords["mallory"], tmp_path))
    assert not isinstance(response, LoginResponse)
    assert response.status_code in ("M_FORBIDDEN", "M_USER_DEACTIVATED")


def test_reset_password_replaces_the_old_one(team, tmp_path):
    facts, passwords = team
    result = invoke("user.reset-password", "bob", "--name", APPLIANCE)
    new = re.search(r"^password: (\S+)$", result.stdout, re.MULTILINE).group(1)
    assert not isinstance(asyncio.run(_login(facts, "bob", passwords["bob"], tmp_path / "old")), LoginResponse)
    assert isinstance(asyncio.run(_login(facts, "bob", new, tmp_path / "new")), LoginResponse)


def test_audit_lists_logins_with_devices_and_addresses(team):
    table = invoke("audit", "--name", APPLIANCE).stdout
    assert "@alice:" in table and "@bob:" in table
    assert "10.0.2.2" in table  # the host's side of qemu's user network, as nginx forwards it


def test_turn_allocation_works_and_internal_relays_are_refused(team):
    result = invoke("turn-check", "--name", APPLIANCE, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout + result.stderr
    assert "relayed address" in out
    for peer in ("127.0.0.1", "10.0.0.1", "169.254.169.254"):
        line = next(x for x in out.splitlines() if f" {peer} " in f" {x} ")
        assert "refused (403" in line, line
