"""Synapse's admin and client APIs as the operator uses them: accounts, devices and their keys, the
#control room, its members and power.

Everything goes through Synapse's localhost listener, reached over the appliance's pinned SSH
channel (a local port forward): the admin API is never on a public port. Accounts are made with
the shared-secret registration API (registration stays off); an `outband-admin` service account,
made on first use, holds the admin token (state dir, 0600). It is never a member of any room.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from appliance import ssh
from appliance.errors import ExitStatus, OutbandError, die
from appliance.net import free_port
from appliance.state import Record, write_private
from appliance.wait import wait_until

SERVICE_ACCOUNT = "outband-admin"
RECORDER_ACCOUNT = "outband-recorder"  # the case recorder (images/files/usr/local/lib/outband/recorder.py)
RESERVED = (SERVICE_ACCOUNT, RECORDER_ACCOUNT)
# The tool's own rule for new accounts (narrower than Matrix's): a lowercase letter first, then
# lowercase letters, digits, '.', '_' or '-'; at most 32 characters.
LOCALPART = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
CONTROL_ALIAS = "control"
MODERATOR, ADMIN = 50, 100


def new_password() -> str:
    return secrets.token_urlsafe(18)  # 144 bits from the OS CSPRNG


def validate_localpart(name: str) -> str:
    if not LOCALPART.match(name or "") or name in RESERVED:
        die(
            f"invalid account name {name!r}",
            hint="start with a lowercase letter; then lowercase letters, digits, '.', '_' or '-'; "
            f"at most 32 characters; not {' or '.join(RESERVED)}",
            status=ExitStatus.USAGE,
        )
    return name


def fingerprint(ed25519: str) -> str:
    """A device's ed25519 key the way Matrix clients show it (Element, Hydrogen): groups of four."""
    return " ".join(ed25519[i : i + 4] for i in range(0, len(ed25519), 4))


@contextlib.contextmanager
def tunnel(record: Record) -> Iterator[str]:
    """http://127.0.0.1:PORT → the appliance's Synapse on its own 127.0.0.1:8008, through SSH."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "ssh",
            "-F",
            str(record.path("ssh_config")),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-L",
            f"127.0.0.1:{port}:127.0.0.1:8008",
            ssh.alias(record.name),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def open_() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode().strip() if proc.stderr else ""
            die(
                f"SSH tunnel to {record.name} failed: {err.splitlines()[-1] if err else proc.returncode}",
                hint=f"is the appliance running? `invoke ls`; ssh -F {record.path('ssh_config')}",
            )
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(open_, timeout=30, interval=0.1, what="the SSH tunnel", hint="check the appliance: `invoke verify`")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Admin:
    """Synapse's APIs as the operator (or, for one call, as an account on its behalf), over the tunnel."""

    base: str
    domain: str
    token: str = ""

    def __post_init__(self) -> None:
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60))

    def request(self, method: str, path: str, body: Any = None, token: bool | str = True) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        bearer = token if isinstance(token, str) else (self.token if token else "")
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        r = self.http.request(
            method, self.base + path, body=None if body is None else json.dumps(body), headers=headers
        )
        try:
            data = json.loads(r.data) if r.data else {}
        except ValueError:
            data = {"error": r.data.decode(errors="replace")[:200]}
        return r.status, data

    def user_id(self, name: str) -> str:
        return f"@{name}:{self.domain}"

    def check(self, status: int, data: dict, what: str) -> dict:
        if status == 404 or data.get("errcode") == "M_NOT_FOUND":
            die(f"{what}: not found", hint="`invoke user.list` shows the accounts", status=ExitStatus.USAGE)
        if status >= 300:
            raise OutbandError(f"{what} failed ({status} {data.get('errcode')}: {data.get('error')})")
        return data

    # -- accounts -----------------------------------------------------------------------------------
    def register(self, shared_secret: str, name: str, password: str, admin: bool) -> dict:
        """Synapse's shared-secret registration (docs/admin_api/register_api.md). It returns a
        token on a new device: the caller logs it out unless it keeps it (the service account)."""
        status, nonce = self.request("GET", "/_synapse/admin/v1/register", token=False)
        if status != 200:
            die(
                f"Synapse refused a registration nonce ({status}: {nonce.get('error')})",
                hint="is registration_shared_secret_path set on the appliance?",
            )
        mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce["nonce"], name, password):
            mac.update(part.encode() + b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        status, data = self.request(
            "POST",
            "/_synapse/admin/v1/register",
            token=False,
            body={
                "nonce": nonce["nonce"],
                "username": name,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        if status == 200:
            return data
        if data.get("errcode") == "M_USER_IN_USE":
            die(
                f"account {name!r} already exists",
                hint=f"pick another name, or `invoke user.reset-password {name}`",
                status=ExitStatus.USAGE,
            )
        die(
            f"Synapse refused to create {name!r}: {data.get('errcode')} {data.get('error')}",
            hint="check the account name",
            status=ExitStatus.USAGE,
        )

    def logout(self, token: str) -> None:
        """End a session: its device (and its keys) are deleted."""
        self.check(*self.request("POST", "/_matrix/client/v3/logout", {}, token=token), "log out")

    def users(self, include_deactivated: bool = True) -> list[dict]:
        found: list[dict] = []
        start: str | None = "0"
        flag = "true" if include_deactivated else "false"
        while start is not None:
            data = self.check(
                *self.request(
                    "GET", f"/_synapse/admin/v2/users?from={start}&limit=100&guests=false&deactivated={flag}"
                ),
                "list users",
            )
            found += data.get("users", [])
            start = data.get("next_token")
        return found

    def user(self, name: str) -> dict:
        return self.check(*self.request("GET", f"/_synapse/admin/v2/users/{quote(self.user_id(name))}"), f"user {name}")

    def deactivate(self, name: str, erase: bool) -> None:
        self.check(
            *self.request("POST", f"/_synapse/admin/v1/deactivate/{quote(self.user_id(name))}", {"erase": erase}),
            f"deactivate {name}",
        )

    def reset_password(self, name: str, password: str) -> None:
        self.check(
            *self.request(
                "POST",
                f"/_synapse/admin/v1/reset_password/{quote(self.user_id(name))}",
                {"new_password": password, "logout_devices": True},
            ),
            f"reset password of {name}",
        )

    # -- devices and their keys ---------------------------------------------------------------------
    def devices(self, user_id: str) -> list[dict]:
        data = self.check(
            *self.request("GET", f"/_synapse/admin/v2/users/{quote(user_id)}/devices"), f"devices of {user_id}"
        )
        return data.get("devices", [])

    def device_keys(self, user_id: str) -> dict[str, dict]:
        """Each device's published identity keys (what other members' clients encrypt to)."""
        data = self.check(
            *self.request("POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}}), "query keys"
        )
        return data.get("device_keys", {}).get(user_id, {})

    # -- acting for an account ----------------------------------------------------------------------
    @contextlib.contextmanager
    def as_user(self, user_id: str) -> Iterator[str]:
        """A short-lived token for `user_id` (the admin API's "login as a user": no device is made,
        the account's own sessions are untouched), logged out again afterwards."""
        data = self.check(
            *self.request("POST", f"/_synapse/admin/v1/users/{quote(user_id)}/login", {}), f"act for {user_id}"
        )
        try:
            yield data["access_token"]
        finally:
            self.request("POST", "/_matrix/client/v3/logout", {}, token=data["access_token"])

    # -- rooms --------------------------------------------------------------------------------------
    def resolve_alias(self, alias: str) -> str | None:
        status, data = self.request("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}")
        return data.get("room_id") if status == 200 else None

    def room_creator(self, room_id: str) -> str:
        state = self.check(*self.request("GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/state"), "room state")
        return next(e["sender"] for e in state.get("state", []) if e["type"] == "m.room.create")

    def room_members(self, room_id: str) -> list[dict]:
        """Every membership in the room, with its power level (admin API: no need to be a member)."""
        state = self.check(*self.request("GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/state"), "room state")
        events = state.get("state", [])
        create = next((e for e in events if e["type"] == "m.room.create"), {})
        power = next((e for e in events if e["type"] == "m.room.power_levels"), {}).get("content", {})
        creators = {create.get("sender")} | set(create.get("content", {}).get("additional_creators", []))
        version = create.get("content", {}).get("room_version", "1")
        rows = []
        for e in events:
            if e["type"] != "m.room.member":
                continue
            user = e["state_key"]
            # Room version 12 (MSC4289): creators have unlimited power, outside the power levels.
            level: int | str = (
                "creator"
                if version == "12" and user in creators
                else power.get("users", {}).get(user, power.get("users_default", 0))
            )
            rows.append({"user": user, "membership": e["content"].get("membership", ""), "power": level})
        return sorted(rows, key=lambda r: r["user"])


def shared_secret(record: Record) -> str:
    return json.loads(record.path("secrets.json").read_text())["registration_shared"]


def admin_session(record: Record, base: str) -> Admin:
    """The operator's admin token, from the state dir; made on first use via shared-secret registration."""
    admin = Admin(base, record.data["domain"])
    file = record.path("admin.json")
    if file.exists():
        admin.token = json.loads(file.read_text())["access_token"]
        return admin
    created = admin.register(shared_secret(record), SERVICE_ACCOUNT, new_password(), admin=True)
    write_private(file, json.dumps({"user_id": created["user_id"], "access_token": created["access_token"]}))
    admin.token = created["access_token"]
    return admin


def control_room_power(room_version: str, lead: str, admins: list[str]) -> dict[str, Any]:
    """#control's power levels: the team's admin accounts hold 100 (the lead, as the room's creator,
    holds creator power in room version 12, which a power-levels event may not list); inviting,
    removing and changing the room need a moderator; everyone may talk."""
    users = {u: ADMIN for u in admins if not (room_version == "12" and u == lead)}
    if room_version != "12":
        users[lead] = ADMIN
    return {
        "users": users,
        "users_default": 0,
        "events_default": 0,
        "state_default": MODERATOR,
        "invite": MODERATOR,
        "kick": MODERATOR,
        "ban": MODERATOR,
        "redact": MODERATOR,
        "events": {
            "m.room.power_levels": ADMIN,
            "m.room.encryption": ADMIN,
            "m.room.history_visibility": ADMIN,
            "m.room.tombstone": ADMIN,
            "m.room.server_acl": ADMIN,
            "m.room.name": MODERATOR,
            "m.room.topic": MODERATOR,
        },
    }


# Megolm session rotation after every message: hydrogen-web#1115 (checked in hydrogen-view-sdk 0.3.1,
# DeviceTracker.writeDeviceChanges and RoomEncryption.encrypt): Hydrogen shares a room key only when
# it starts a new Megolm session or a user newly joins its tracked set; a NEW DEVICE of a member it
# already tracks only marks that user outdated, and the session is reused until it rotates (default
# 100 messages or a week), so the new device never gets the key. Measured: with rotation after each
# message a device that signed in later decrypted the next message. Hydrogen reads only a room's
# first m.room.encryption event, so this is set when the room is made. Cost: one new session (one
# Olm message per member device) per message, nothing for a team's room.
CONTROL_ENCRYPTION = {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 1}


def ensure_power(admin: Admin, room_id: str, wanted: dict[str, int]) -> bool:
    """Raise these users to these power levels in the room (never lower anyone), as its creator;
    True if the power levels changed. A creator in room version 12 is above the levels: left out."""
    creator = admin.room_creator(room_id)
    path = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels"
    with admin.as_user(creator) as token:
        levels = admin.check(*admin.request("GET", path, token=token), "power levels")
        _, create = admin.request("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.create", token=token)
        above = {creator} if create.get("room_version") == "12" else set()
        users = dict(levels.get("users", {}))
        raise_ = {
            u: p for u, p in wanted.items() if u not in above and users.get(u, levels.get("users_default", 0)) < p
        }
        if not raise_:
            return False
        admin.check(*admin.request("PUT", path, {**levels, "users": {**users, **raise_}}, token=token), "power levels")
    return True


def join_and_alias(admin: Admin, lead: str, room_id: str, via: str) -> str | None:
    """On another server of the team: its lead joins the room (invited already; `via` is the server
    that made it) and gives it this server's alias, #control:<this server>. Idempotent. A #control
    that server had alone (made before it joined the team) loses the alias to the team's room and
    stays as it is otherwise; its ID is returned so that the operator is told."""
    alias = f"#{CONTROL_ALIAS}:{admin.domain}"
    with admin.as_user(lead) as token:
        admin.check(
            *admin.request(
                "POST", f"/_matrix/client/v3/join/{quote(room_id)}?server_name={quote(via)}", {}, token=token
            ),
            f"{lead} joins {room_id}",
        )
        existing = admin.resolve_alias(alias)
        if existing == room_id:
            return None
        if existing is not None:  # the server admin's token may remove any alias of its server
            admin.check(*admin.request("DELETE", f"/_matrix/client/v3/directory/room/{quote(alias)}"), f"move {alias}")
        admin.check(
            *admin.request(
                "PUT", f"/_matrix/client/v3/directory/room/{quote(alias)}", {"room_id": room_id}, token=token
            ),
            f"alias {alias}",
        )
    return existing


def ensure_control_room(admin: Admin, lead: str, members: list[str], admins: list[str]) -> tuple[str, list[str], bool]:
    """An encrypted, invite-only #control room owned by `lead`, with these members invited;
    idempotent (a re-run invites who is missing). Returns (room id, who was invited, created?)."""
    alias = f"#{CONTROL_ALIAS}:{admin.domain}"
    room_id = admin.resolve_alias(alias)
    invited: list[str] = []
    # An existing room's invitations come from its owner (joined since it made the room).
    with admin.as_user(lead if room_id is None else admin.room_creator(room_id)) as token:
        if room_id is None:
            _, caps = admin.request("GET", "/_matrix/client/v3/capabilities", token=token)
            version = caps.get("capabilities", {}).get("m.room_versions", {}).get("default", "10")
            body = {
                "visibility": "private",
                "room_alias_name": CONTROL_ALIAS,
                "name": "control",
                "topic": "Out-of-band incident response: members only, end-to-end encrypted",
                "preset": "private_chat",
                "room_version": version,
                "invite": [m for m in members if m != lead],
                "power_level_content_override": control_room_power(version, lead, admins),
                "initial_state": [
                    {"type": "m.room.encryption", "state_key": "", "content": CONTROL_ENCRYPTION},
                    {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
                    {
                        "type": "m.room.history_visibility",
                        "state_key": "",
                        "content": {"history_visibility": "invited"},
                    },
                ],
            }
            data = admin.check(
                *admin.request("POST", "/_matrix/client/v3/createRoom", body, token=token), f"create {alias}"
            )
            return data["room_id"], body["invite"], True
        present = {r["user"] for r in admin.room_members(room_id) if r["membership"] in ("join", "invite")}
        for user_id in members:
            if user_id not in present:
                admin.check(
                    *admin.request(
                        "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": user_id}, token=token
                    ),
                    f"invite {user_id}",
                )
                invited.append(user_id)
    return room_id, invited, False
