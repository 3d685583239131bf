"""Issue 19's load: a team of responders, each a matrix-nio device with end-to-end encryption, all in
#control (made by the operator's `invoke control-room`, so the case recorder is in it) and each in
one of five other encrypted rooms (the recorder invited there too), sending at a steady rate,
alternately to #control and to their other room.

Used twice: the power-cut test (tests/e2e/test_survive.py kills the VM while the team sends) and
`invoke bench --load` (tests/bench/load.py: 20 × 100 messages, latency, CPU and memory).

What counts: a message is *acknowledged* when the server answered 200 to its send. Every
acknowledged message must reach every member of its room, decrypted, once; a send cut off by a
failure may or may not have been kept (its answer was lost, perhaps not its write), but never twice.
Latency is send → decrypted by each receiving member, both ends on this machine's monotonic clock.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nio import MegolmEvent, RoomMessageText, RoomSendResponse

from appliance import matrix
from appliance.config import REPO
from appliance.state import Record
from tests.e2e import clients

ENCRYPTED = [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]


@dataclass
class Outcome:
    acknowledged: int
    refused: list[str]
    lost: list[str]  # "body → member" that never arrived decrypted
    duplicated: list[str]  # "body at member" seen as more than one event
    undecryptable: int
    unsent: list[str]  # bodies a member saw that no sender ever tried
    latency_ms: list[float] = field(default_factory=list)
    sending_s: float = 0.0


class Team:
    """`size` responders (the first is the lead, an admin), their devices, and their rooms."""

    def __init__(
        self, record: Record, facts: dict, work: Path, size: int = 20, other_rooms: int = 5, prefix: str = "load"
    ):
        self.record, self.facts, self.work = record, facts, work
        self.names = [f"{prefix}{i:02d}" for i in range(size)]
        self.phases: dict[str, float] = {}  # phase → seconds (reported by the bench, shown on failure)
        self.other_rooms = other_rooms
        self.devices: list[clients.Device] = []
        self.recorder = ""
        self.control = ""
        self.rooms: dict[str, list[str]] = {}  # room id → its members' user ids (the recorder aside)
        self.home: dict[str, str] = {}  # user id → the other room it is in
        self.attempted: dict[str, float] = {}  # body → when its send started (monotonic)
        self.acked: dict[str, str] = {}  # body → room id, for the sends the server answered 200
        self.refused: list[str] = []
        self._stop_syncing = asyncio.Event()

    # -- the operator's part (synchronous: accounts over the tunnel, then the real command) ---------
    def enrol(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Accounts (as `invoke user.add` makes them, in one tunnel: twenty commands would each open
        one), then #control with all of them by `invoke control-room`. Returns the passwords."""
        passwords = {name: matrix.new_password() for name in self.names}
        with matrix.tunnel(self.record) as base:
            api = matrix.admin_session(self.record, base)
            secret = matrix.shared_secret(self.record)

            def register(name: str) -> None:
                api.logout(api.register(secret, name, passwords[name], admin=name == self.names[0])["access_token"])

            # Four at a time: Synapse hashes with bcrypt in its thread pool, so both vCPUs work.
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(register, self.names))
            self.recorder = api.user_id(matrix.RECORDER_ACCOUNT)
        # Not tests.e2e.conftest.invoke: the bench runs this too, outside a test session's directories.
        made = subprocess.run(
            ["invoke", "control-room", "--name", self.record.name, "--members", ",".join(self.names)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        return passwords

    # -- the responders' part -------------------------------------------------------------------------
    async def sign_in(self, passwords: dict[str, str]) -> None:
        """Every device signs in and joins its rooms; the lead makes the five other rooms. Then each
        device in turn shares its room keys once: the first Olm sessions between every pair of
        devices (a one-time key claimed for each) are a team's set-up, done once, not the steady
        load this measures."""
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            self.phases[name] = round(time.monotonic() - mark, 1)
            mark = time.monotonic()

        self.devices = [clients.Device(self.facts, name, self.work / name) for name in self.names]
        # Four at a time: Synapse checks passwords with bcrypt in its thread pool (both vCPUs).
        for i in range(0, len(self.devices), 4):
            batch = zip(self.names[i : i + 4], self.devices[i : i + 4], strict=True)
            await asyncio.gather(*(device.login(passwords[name], "load") for name, device in batch))
        phase("sign in")
        lead = self.devices[0]
        resolved = await lead.client.room_resolve_alias(f"#{matrix.CONTROL_ALIAS}:{self.facts['domain']}")
        self.control = resolved.room_id
        self.rooms[self.control] = [d.user_id for d in self.devices]

        async def make_room(k: int) -> None:
            members = [d.user_id for i, d in enumerate(self.devices) if i % self.other_rooms == k]
            invite = [m for m in members if m != lead.user_id] + [self.recorder]
            created = await lead.client.room_create(name=f"load room {k}", invite=invite, initial_state=ENCRYPTED)
            assert hasattr(created, "room_id"), created
            self.rooms[created.room_id] = members
            for m in members:
                self.home[m] = created.room_id

        await asyncio.gather(*(make_room(k) for k in range(self.other_rooms)))

        async def join(device: clients.Device) -> None:
            await device.sync(500)
            for room_id in list(device.client.invited_rooms):
                joined = await device.client.join(room_id)
                assert hasattr(joined, "room_id"), joined

        phase("rooms made")
        await asyncio.gather(*(join(d) for d in self.devices))
        phase("joined")

        def everyone_in() -> bool:
            for d in self.devices:
                for room_id, members in self.rooms.items():
                    if d.user_id in members:
                        room = d.client.rooms.get(room_id)
                        if room is None or not {*members, self.recorder} <= set(room.users):
                            return False
            return True

        await clients.until(everyone_in, self.devices, timeout=900)
        phase("everyone seen in")
        for d in self.devices:
            for room_id, members in self.rooms.items():
                if d.user_id in members:
                    await d.sync(0)
                    await d.client.share_group_session(room_id, ignore_unverified_devices=True)
        phase("room keys shared")

    async def receive(self) -> None:
        """Every device long-polls /sync until `stop_receiving()` (as a client does while open)."""
        self._stop_syncing.clear()

        async def loop(d: clients.Device) -> None:
            while not self._stop_syncing.is_set():
                await d.sync(5000)

        await asyncio.gather(*(loop(d) for d in self.devices))

    def stop_receiving(self) -> None:
        self._stop_syncing.set()

    async def send(self, messages: int, interval_s: float, tag: str = "load") -> float:
        """Each device sends `messages`, one every `interval_s`, the devices staggered so that the
        team's rate is steady. Returns how long sending took."""
        size = len(self.devices)

        async def sender(index: int, d: clients.Device) -> None:
            start = time.monotonic() + index * interval_s / size
            for n in range(messages):
                await asyncio.sleep(max(0.0, start + n * interval_s - time.monotonic()))
                room_id = self.control if n % 2 == 0 else self.home[d.user_id]
                body = f"{tag} {index:02d} {n:03d}"
                self.attempted[body] = time.monotonic()
                try:
                    response = await d.client.room_send(
                        room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
                    )
                except Exception as e:  # nio raises as well as returns errors: count it, go on
                    response = e
                if isinstance(response, RoomSendResponse):
                    self.acked[body] = room_id
                else:
                    self.refused.append(f"{body}: {response}")

        started = time.monotonic()
        await asyncio.gather(*(sender(i, d) for i, d in enumerate(self.devices)))
        return time.monotonic() - started

    async def acknowledged(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {count} sends acknowledged"
            await asyncio.sleep(0.2)

    def _expected(self) -> list[tuple[str, clients.Device]]:
        return [
            (body, d) for body, room_id in self.acked.items() for d in self.devices if d.user_id in self.rooms[room_id]
        ]

    def all_arrived(self) -> bool:
        return all(body in d.arrived for body, d in self._expected())

    async def drain(self, timeout: float) -> None:
        """Sync every device until each has every acknowledged message of its rooms, or time is up."""
        deadline = time.monotonic() + timeout
        while not self.all_arrived() and time.monotonic() < deadline:
            await asyncio.gather(*(d.sync(1000) for d in self.devices))

    async def reconnect(self) -> None:
        """New HTTP sessions after the server went away (the crypto stores and sync tokens are kept)."""
        for d in self.devices:
            if d.client.client_session is not None:
                await d.client.client_session.close()
            d.client.client_session = None
            await d.open()

    async def close(self) -> None:
        for d in self.devices:
            await d.close()

    def outcome(self, tags: tuple[str, ...] = ("load",)) -> Outcome:
        lost = [f"{body} → {d.user_id}" for body, d in self._expected() if body not in d.arrived]
        latency = [
            1000 * (d.arrived[body] - self.attempted[body])
            for body, d in self._expected()
            if body in d.arrived and d.arrived[body] >= self.attempted[body]
        ]
        duplicated, unsent, undecryptable = [], [], 0
        for d in self.devices:
            ids: dict[str, set[str]] = {}
            for event in d.seen:
                if isinstance(event, RoomMessageText) and event.body.startswith(tags):
                    ids.setdefault(event.body, set()).add(event.event_id)
                elif isinstance(event, MegolmEvent):
                    undecryptable += 1
            duplicated += [f"{body} at {d.user_id}" for body, found in ids.items() if len(found) > 1]
            unsent += [body for body in ids if body not in self.attempted]
        return Outcome(len(self.acked), self.refused, lost, duplicated, undecryptable, sorted(set(unsent)), latency)
