"""Team operations on an appliance: accounts, the #control room, the access audit.

Everything administrative goes through Synapse's localhost listener, reached over the
appliance's pinned SSH channel (a local port forward): the admin API is never on a public port.
Accounts are made with the shared-secret registration API (registration stays off); an
`outband-admin` service account, created on first use, holds the admin token (state dir, 0600).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from appliance import ssh
from appliance.errors import ExitStatus, OutbandError, die
from appliance.state import Record, write_private

SERVICE_ACCOUNT = "outband-admin"
# Matrix user ID localparts (spec: historical grammar is wider; new accounts use this).
LOCALPART = re.compile(r"^[a-z0-9._=\-/]{1,64}$")


def new_password() -> str:
    return secrets.token_urlsafe(18)  # 144 bits from the OS CSPRNG


def validate_localpart(name: str) -> str:
    if not LOCALPART.match(name or "") or name.startswith("_") or name == SERVICE_ACCOUNT:
        die(
            f"invalid user name {name!r}",
            hint="use lowercase letters, digits and . _ = - / (up to 64), "
            f"not starting with _ and not {SERVICE_ACCOUNT!r}",
            status=ExitStatus.USAGE,
        )
    return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tunnel(record: Record) -> Iterator[str]:
    """http://127.0.0.1:PORT → the appliance's Synapse on its own 127.0.0.1:8008, through SSH."""
    port = _free_port()
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
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode().strip() if proc.stderr else ""
                die(
                    f"SSH tunnel to {record.name} failed: {err.splitlines()[-1] if err else proc.returncode}",
                    hint=f"is the appliance running? `invoke ls`; ssh -F {record.path('ssh_config')}",
                )
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                die("SSH tunnel did not open in 30s", hint="check the appliance with `invoke verify`")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Admin:
    """Synapse's APIs as the operator, over the tunnel."""

    base: str
    domain: str
    token: str = ""

    def __post_init__(self) -> None:
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60))

    def request(self, method: str, path: str, body: Any = None, token: bool = True) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
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

    def register(self, shared_secret: str, name: str, password: str, admin: bool) -> dict:
        """Synapse's shared-secret registration (docs/admin_api/register_api.md)."""
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
                f"user {name!r} already exists",
                hint=f"pick another name, or `invoke user.reset-password {name}`",
                status=ExitStatus.USAGE,
            )
        die(
            f"Synapse refused to create {name!r}: {data.get('errcode')} {data.get('error')}",
            hint="check the user name",
            status=ExitStatus.USAGE,
        )

    def check(self, status: int, data: dict, what: str) -> dict:
        if status == 404 or data.get("errcode") == "M_NOT_FOUND":
            die(f"{what}: not found", hint="`invoke user.list` shows the accounts", status=ExitStatus.USAGE)
        if status >= 300:
            raise OutbandError(f"{what} failed ({status} {data.get('errcode')}: {data.get('error')})")
        return data

    def users(self) -> list[dict]:
        found, start = [], "0"
        while start is not None:
            data = self.check(
                *self.request("GET", f"/_synapse/admin/v2/users?from={start}&limit=100&guests=false"), "list users"
            )
            found += data.get("users", [])
            start = data.get("next_token")
        return found

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

    def whois(self, user_id: str) -> dict:
        return self.check(*self.request("GET", f"/_synapse/admin/v1/whois/{quote(user_id)}"), f"whois {user_id}")


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


def login_rows(admin: Admin) -> list[dict[str, str]]:
    """Who connected, when, from which address and device — one row per connection."""
    rows = []
    for user in admin.users():
        info = admin.whois(user["name"])
        for device, sessions in sorted(info.get("devices", {}).items()):
            for session in sessions.get("sessions", []):
                for c in session.get("connections", []):
                    seen = dt.datetime.fromtimestamp(c["last_seen"] / 1000, dt.UTC)
                    rows.append(
                        {
                            "user": user["name"],
                            "device": device or "-",
                            "ip": c.get("ip", "-"),
                            "last_seen": seen.isoformat(timespec="seconds"),
                            "user_agent": (c.get("user_agent") or "-")[:60],
                            "deactivated": "yes" if user.get("deactivated") else "",
                        }
                    )
    return sorted(rows, key=lambda r: r["last_seen"])


CONTROL_ALIAS = "control"


async def _ensure_control_room(base: str, admin: Admin, user_ids: list[str]) -> tuple[str, list[str]]:
    """An encrypted, invite-only #control room with these members; idempotent (re-run invites the missing)."""
    from nio import (
        AsyncClient,
        AsyncClientConfig,
        RoomCreateResponse,
        RoomGetStateResponse,
        RoomPreset,
        RoomResolveAliasResponse,
        RoomVisibility,
    )

    me = admin.user_id(SERVICE_ACCOUNT)
    client = AsyncClient(base, me, config=AsyncClientConfig(encryption_enabled=False))
    client.access_token, client.user_id = admin.token, me
    try:
        alias = f"#{CONTROL_ALIAS}:{admin.domain}"
        resolved = await client.room_resolve_alias(alias)
        if isinstance(resolved, RoomResolveAliasResponse):
            room_id = resolved.room_id
        else:
            created = await client.room_create(
                visibility=RoomVisibility.private,
                alias=CONTROL_ALIAS,
                name="control",
                topic="Out-of-band incident response: members only, end-to-end encrypted",
                preset=RoomPreset.private_chat,
                invite=user_ids,
                initial_state=[
                    {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                    {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
                    {
                        "type": "m.room.history_visibility",
                        "state_key": "",
                        "content": {"history_visibility": "invited"},
                    },
                ],
            )
            if not isinstance(created, RoomCreateResponse):
                raise OutbandError(f"creating {alias} failed: {created}")
            return created.room_id, user_ids
        state = await client.room_get_state(room_id)
        if not isinstance(state, RoomGetStateResponse):
            raise OutbandError(f"reading {alias} failed: {state}")
        present = {
            e["state_key"]
            for e in state.events
            if e["type"] == "m.room.member" and e["content"].get("membership") in ("join", "invite")
        }
        invited = []
        for user_id in user_ids:
            if user_id not in present:
                response = await client.room_invite(room_id, user_id)
                if getattr(response, "status_code", None):
                    raise OutbandError(f"inviting {user_id} failed: {response}")
                invited.append(user_id)
        return room_id, invited
    finally:
        await client.close()


def ensure_control_room(base: str, admin: Admin, members: list[str]) -> tuple[str, list[str]]:
    import asyncio

    known = {u["name"] for u in admin.users() if not u.get("deactivated")}
    user_ids = [admin.user_id(validate_localpart(m)) for m in members]
    missing = [u for u in user_ids if u not in known]
    if missing:
        die(
            f"no such active user: {', '.join(missing)}",
            hint="create them first with `invoke user.add NAME`",
            status=ExitStatus.USAGE,
        )
    return asyncio.run(_ensure_control_room(base, admin, user_ids))
