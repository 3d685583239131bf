"""The team-operation tasks (accounts, devices, #control, the audit), printing for the operator.

Tables go through appliance.table: a full table on a terminal, tab-separated lines when piped,
JSON with --json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import shlex
import subprocess
import time
from collections.abc import Iterator

from appliance import audit as audit_mod
from appliance import contract, log, matrix, ssh
from appliance.config import Settings
from appliance.errors import ExitStatus, die
from appliance.state import Record, Store
from appliance.table import Table


def _record(s: Settings, name: str) -> Record:
    return Store(s.dirs.state).require(name)


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    seconds = ms / 1000 if ms > 1e11 else ms  # Synapse gives creation_ts in seconds, last_seen_ts in ms
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def user_add(s: Settings, appliance: str, user: str, admin: bool) -> None:
    matrix.validate_localpart(user)
    record = _record(s, appliance)
    password = matrix.new_password()
    with matrix.tunnel(record) as base:
        api = matrix.Admin(base, record.data["domain"])
        created = api.register(matrix.shared_secret(record), user, password, admin=admin)
        # Registration signs the new account in on a device nobody uses (and that would look like
        # a stranger's session in `user.devices` and to the team's clients): end it at once.
        api.logout(created["access_token"])
    # Printed once, to the terminal only: never logged, never stored.
    log.detail(f"created {created['user_id']} (admin={admin})")
    log.out.print(f"created [bold]{created['user_id']}[/]{' (admin)' if admin else ''}")
    print(f"password: {password}")
    log.console.print("[dim]shown once: hand it over out of band; it is not stored anywhere[/]")


def user_list(s: Settings, appliance: str, active_only: bool, as_json: bool) -> None:
    record = _record(s, appliance)
    with matrix.tunnel(record) as base:
        users = matrix.admin_session(record, base).users(include_deactivated=not active_only)
    table = Table("account", "admin", "deactivated", "created")
    for u in sorted(users, key=lambda u: u["name"]):
        if u["name"].split(":")[0][1:] in matrix.RESERVED:
            continue
        table.add(
            u["name"],
            "yes" if u.get("admin") else "",
            "yes" if u.get("deactivated") else "",
            _when(u.get("creation_ts")),
        )
    table.show(as_json)


def user_devices(s: Settings, appliance: str, user: str, as_json: bool) -> None:
    """Each device of an account with its key fingerprint, as clients show it: two people read
    these to each other over a second channel before they trust the room."""
    record = _record(s, appliance)
    matrix.validate_localpart(user)
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        user_id = api.user_id(user)
        api.user(user)  # a clear "not found" for an unknown account
        devices = api.devices(user_id)
        keys = api.device_keys(user_id)
    table = Table("device", "name", "last seen (UTC)", "address", "fingerprint (ed25519)")
    for d in sorted(devices, key=lambda d: d.get("last_seen_ts") or 0):
        ed25519 = keys.get(d["device_id"], {}).get("keys", {}).get(f"ed25519:{d['device_id']}", "")
        table.add(
            d["device_id"],
            d.get("display_name") or "",
            _when(d.get("last_seen_ts")),
            d.get("last_seen_ip") or "-",
            matrix.fingerprint(ed25519) if ed25519 else "(no keys published)",
        )
    table.show(as_json)


def user_deactivate(s: Settings, appliance: str, user: str, erase: bool) -> None:
    record = _record(s, appliance)
    matrix.validate_localpart(user)
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        api.deactivate(user, erase)
    log.out.print(
        f"deactivated {api.user_id(user)} (every session signed out){' and erased its data' if erase else ''}"
    )


def user_reset_password(s: Settings, appliance: str, user: str) -> None:
    record = _record(s, appliance)
    matrix.validate_localpart(user)
    password = matrix.new_password()
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        api.reset_password(user, password)
    log.out.print(f"new password for {api.user_id(user)} (its devices were logged out):")
    print(f"password: {password}")


def control_room(
    s: Settings, appliance: str, members: list[str], lead: str | None, servers: list[str] | None = None
) -> None:
    record = _record(s, appliance)
    for m in members:
        matrix.validate_localpart(m)
    if not members:
        die("no members given", hint="pass --members lead,fox,owl", status=ExitStatus.USAGE)
    others = [name for name in dict.fromkeys(servers or []) if name != appliance]
    if others:
        _control_room_across(record, [_record(s, name) for name in others], members, lead)
        return
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        accounts = {u["name"]: u for u in api.users(include_deactivated=False)}
        user_ids = [api.user_id(m) for m in members]
        missing = [u for u in user_ids if u not in accounts]
        if missing:
            die(
                f"no such active account: {', '.join(missing)}",
                hint="create them first with `invoke user.add NAME`",
                status=ExitStatus.USAGE,
            )
        admins = [u for u in user_ids if accounts[u].get("admin")]
        owner = api.user_id(matrix.validate_localpart(lead)) if lead else (admins[0] if admins else None)
        if owner is None or owner not in user_ids or owner not in admins:
            die(
                "#control needs a lead: an admin account among the members, who owns the room",
                hint="add one with `invoke user.add NAME --admin`, or name it with --lead",
                status=ExitStatus.USAGE,
            )
        # The case recorder is a member like any other, shown to all: the team knows #control is recorded.
        recorder = _await_recorder(api)
        room_id, invited, created = matrix.ensure_control_room(api, owner, [*user_ids, recorder], admins)
        recording = _await_join(api, room_id, recorder)
        members_now = api.room_members(room_id)
    alias = f"#{matrix.CONTROL_ALIAS}:{record.data['domain']}"
    verb = f"created by {owner}" if created else "exists"
    log.out.print(f"{alias} ({room_id}) {verb}; invited: {', '.join(invited) if invited else 'nobody new'}")
    if not recording:
        die(
            f"the case recorder has not joined {alias} within {RECORDER_WAIT_SECONDS} s: nothing there is recorded",
            hint="on the appliance: `journalctl -u outband-recorder`; re-run this command once it runs",
        )
    log.out.print(f"recorded: {recorder} is a member (`invoke case.export` takes the record)")
    _members_table(members_now).show()


RECORDER_WAIT_SECONDS = 120


@dataclasses.dataclass
class _Server:
    """One appliance of a team, as control-room --servers sees it: its members and its lead."""

    record: Record
    api: matrix.Admin
    members: list[str]  # user IDs of the named accounts that exist there
    admins: list[str]
    lead: str | None
    recorder: str = ""


def _team_server(record: Record, api: matrix.Admin, members: list[str], lead: str | None) -> _Server:
    accounts = {u["name"]: u for u in api.users(include_deactivated=False)}
    present = [api.user_id(m) for m in members if api.user_id(m) in accounts]
    admins = [u for u in present if accounts[u].get("admin")]
    wanted = api.user_id(lead) if lead else None
    owner = wanted if wanted in admins else (admins[0] if admins else None)
    return _Server(record, api, present, admins, owner)


def _require_team(record: Record, team: list[Record]) -> None:
    """Each appliance must federate with every other one (or with anyone)."""
    federation = record.data.get("federation") or {}
    if federation.get("open"):
        return
    missing = [o for o in team if o.data["domain"] not in federation.get("servers", [])]
    if missing:
        die(
            f"{record.name} does not federate with {', '.join(o.data['domain'] for o in missing)}",
            hint=f"`invoke federate --name {record.name} --with {','.join(o.name for o in missing)}`",
            status=ExitStatus.USAGE,
        )


def _control_room_across(home: Record, others: list[Record], members: list[str], lead: str | None) -> None:
    """#control made on `home` (or found there) with the team's members on every server invited;
    each server's lead joins, holds power 100 and gives the room an alias on its own server; each
    server's case recorder is a member. Idempotent: a re-run adds only what is missing."""
    with contextlib.ExitStack() as stack:
        servers = []
        team = [home, *others]
        for record in team:
            _require_team(record, team)
            api = matrix.admin_session(record, stack.enter_context(matrix.tunnel(record)))
            servers.append(_team_server(record, api, members, lead))
        found = {u.split(":", 1)[0][1:] for server in servers for u in server.members}
        unknown = [m for m in members if m not in found]
        if unknown:
            die(
                f"no such active account on any of the servers: {', '.join(unknown)}",
                hint="create them first with `invoke user.add NAME --name APPLIANCE`",
                status=ExitStatus.USAGE,
            )
        leaderless = [sv.record.name for sv in servers if sv.lead is None]
        if leaderless:
            die(
                f"no lead on {', '.join(leaderless)}: each server's lead (an admin among the members) holds the room",
                hint="add one with `invoke user.add NAME --admin --name APPLIANCE`",
                status=ExitStatus.USAGE,
            )
        for sv in servers:
            sv.recorder = _await_recorder(sv.api)
        origin = servers[0]
        everyone = [u for sv in servers for u in [*sv.members, sv.recorder]]
        admins = [u for sv in servers for u in sv.admins]
        room_id, invited, created = matrix.ensure_control_room(origin.api, origin.lead, everyone, admins)
        matrix.ensure_power(origin.api, room_id, {u: matrix.ADMIN for u in admins})
        moved = {}
        for sv in servers[1:]:
            old = matrix.join_and_alias(sv.api, sv.lead, room_id, origin.record.data["domain"])
            if old:
                moved[f"#{matrix.CONTROL_ALIAS}:{sv.record.data['domain']}"] = old
        unrecorded = [sv.recorder for sv in servers if not _await_join(origin.api, room_id, sv.recorder)]
        members_now = origin.api.room_members(room_id)
    aliases = ", ".join(f"#{matrix.CONTROL_ALIAS}:{sv.record.data['domain']}" for sv in servers)
    verb = f"created by {origin.lead}" if created else "exists"
    log.out.print(f"{aliases} ({room_id}) {verb}; invited: {', '.join(invited) if invited else 'nobody new'}")
    for alias, old in moved.items():
        log.out.print(f"{alias} named {old}, a room of that server alone: it now names the team's (the old room stays)")
    if unrecorded:
        die(
            f"not joined within {RECORDER_WAIT_SECONDS} s: {', '.join(unrecorded)} (#control not recorded there)",
            hint="on that appliance: `journalctl -u outband-recorder`; re-run this command once it runs",
        )
    log.out.print("recorded on every server: " + ", ".join(sv.recorder for sv in servers))
    _members_table(members_now).show()


def _await_recorder(api: matrix.Admin) -> str:
    """The recorder's account, which it registers at its first start, just after the launch."""
    recorder = api.user_id(matrix.RECORDER_ACCOUNT)
    deadline = time.monotonic() + RECORDER_WAIT_SECONDS
    while not any(u["name"] == recorder for u in api.users(include_deactivated=False)):
        if time.monotonic() > deadline:
            die(
                f"the case recorder's account {recorder} does not exist after {RECORDER_WAIT_SECONDS} s",
                hint="on the appliance: `journalctl -u outband-recorder`",
            )
        time.sleep(2)
    return recorder


def _await_join(api: matrix.Admin, room_id: str, user_id: str) -> bool:
    """Until the recorder has joined (it joins on its next sync): what is said from then on is recorded."""
    deadline = time.monotonic() + RECORDER_WAIT_SECONDS
    while time.monotonic() < deadline:
        if any(r["user"] == user_id and r["membership"] == "join" for r in api.room_members(room_id)):
            return True
        time.sleep(1)
    return False


def _members_table(rows: list[dict]) -> Table:
    table = Table("account", "membership", "power")
    for r in rows:
        table.add(r["user"], r["membership"], r["power"])
    return table


def room_members(s: Settings, appliance: str, room: str, as_json: bool) -> None:
    record = _record(s, appliance)
    alias = room if room.startswith(("#", "!")) else f"#{room}:{record.data['domain']}"
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        room_id = alias if alias.startswith("!") else api.resolve_alias(alias)
        if room_id is None:
            die(f"no room {alias}", hint="`invoke control-room --members …` makes #control", status=ExitStatus.USAGE)
        rows = api.room_members(room_id)
    _members_table(rows).show(as_json)


AUDIT_COLUMNS = ("time (UTC)", "event", "account", "device", "device name", "address", "client", "detail")


def _journal(record: Record, follow: bool) -> Iterator[str]:
    """Synapse's journal on the appliance, as JSON lines, over the pinned SSH channel."""
    remote = "sudo journalctl -u synapse.service -o json --no-pager" + (" -f -n all" if follow else "")
    proc = subprocess.Popen(
        ssh.argv(record, remote),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield from proc.stdout
        if proc.wait() != 0 and not follow:
            err = proc.stderr.read().strip() if proc.stderr else ""
            die(f"reading the appliance's log failed: {err.splitlines()[-1] if err else proc.returncode}")
    finally:
        proc.terminate()


def _system_events(record: Record) -> list[audit_mod.Event]:
    """auditd's events on the appliance (appliance/sysaudit.py), over the pinned SSH channel."""
    from appliance import sysaudit

    result = ssh.command(record, f"sudo sh -c {shlex.quote(sysaudit.REMOTE)}", timeout=300)
    if result.returncode != 0:
        die(f"reading the appliance's audit log failed: {result.stderr.strip()[-300:]}")
    return sysaudit.events(result.stdout)


def audit(s: Settings, appliance: str, follow: bool, as_json: bool, system: bool = False) -> None:
    record = _record(s, appliance)
    domain = record.data["domain"]
    if system and follow:
        die("--system lists what auditd recorded; it does not follow", hint="drop --follow", status=ExitStatus.USAGE)
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        names = {d["device_id"]: d.get("display_name") or "" for u in api.users() for d in api.devices(u["name"])}
        found = audit_mod.events(_journal(record, follow), domain)
        if not follow:
            table = Table(*AUDIT_COLUMNS)
            listed = audit_mod.name_devices(list(found), names)
            if system:  # with the Matrix events, in time order
                listed = sorted(listed + _system_events(record), key=lambda e: e.time)
            for event in listed:
                table.add(*event.as_dict().values())
            table.show(as_json)
            return
        # Following: one line per event as it happens (JSON lines with --json), never buffered.
        for event in found:
            if event.device and event.device not in names:  # a device made after we started
                names.update({d["device_id"]: d.get("display_name") or "" for d in api.devices(event.account)})
            (named,) = audit_mod.name_devices([event], names)
            print(json.dumps(named.as_dict()) if as_json else "\t".join(named.as_dict().values()), flush=True)


def turn_check(s: Settings, appliance: str) -> None:
    from appliance import turncheck

    record = _record(s, appliance)
    facts = json.loads(record.path("facts.json").read_text())
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
    relayed, results, over_tls = turncheck.check(
        facts["address"], facts["domain"], facts["acme_root"], api.token, facts["address"], contract.PORTS["turns"]
    )
    table = Table("peer", "expected", "coturn said")
    for r in results:
        table.add(r.peer, r.expected, r.outcome)
    log.out.print(f"allocation: relayed address {relayed}")
    log.out.print(f"allocation over TLS ({over_tls.version}): relayed address {over_tls.relayed}")
    table.show()
    if not all(r.ok for r in results):
        die(
            "TURN relaying policy is wrong",
            hint="see denied-peer-ip in /etc/turnserver.conf",
            status=ExitStatus.VERIFY_FAILED,
        )
