"""The team-operation tasks (users, #control, audit), printing for the operator."""

from __future__ import annotations

import time

from rich.table import Table

from appliance import log, matrix
from appliance.config import Settings
from appliance.state import Store


def _record(s: Settings, name: str):
    return Store(s.dirs.state).require(name)


def user_add(s: Settings, appliance: str, user: str, admin: bool) -> None:
    matrix.validate_localpart(user)
    record = _record(s, appliance)
    password = matrix.new_password()
    with matrix.tunnel(record) as base:
        api = matrix.Admin(base, record.data["domain"])
        created = api.register(matrix.shared_secret(record), user, password, admin=admin)
    # Printed once, to the terminal only: never logged, never stored.
    log.detail(f"created {created['user_id']} (admin={admin})")
    log.out.print(f"created [bold]{created['user_id']}[/]{' (admin)' if admin else ''}")
    print(f"password: {password}")
    log.out.print("[dim]shown once: hand it over out of band; it is not stored anywhere[/]")


def user_list(s: Settings, appliance: str) -> None:
    record = _record(s, appliance)
    with matrix.tunnel(record) as base:
        users = matrix.admin_session(record, base).users()
    table = Table("user", "admin", "deactivated", "created")
    for u in users:
        created = time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime(u.get("creation_ts", 0) / (1000 if u.get("creation_ts", 0) > 1e11 else 1))
        )
        table.add_row(u["name"], "yes" if u.get("admin") else "", "yes" if u.get("deactivated") else "", created)
    log.out.print(table)


def user_deactivate(s: Settings, appliance: str, user: str, erase: bool) -> None:
    record = _record(s, appliance)
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        api.deactivate(matrix.validate_localpart(user), erase)
    log.out.print(f"deactivated {api.user_id(user)}{' and erased its data' if erase else ''}")


def user_reset_password(s: Settings, appliance: str, user: str) -> None:
    record = _record(s, appliance)
    password = matrix.new_password()
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        api.reset_password(matrix.validate_localpart(user), password)
    log.out.print(f"new password for {api.user_id(user)} (its devices were logged out):")
    print(f"password: {password}")


def control_room(s: Settings, appliance: str, members: list[str]) -> None:
    record = _record(s, appliance)
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        room_id, invited = matrix.ensure_control_room(base, api, members)
    log.out.print(
        f"#control:{record.data['domain']} is {room_id}; invited: {', '.join(invited) if invited else 'nobody new'}"
    )


def audit(s: Settings, appliance: str, follow: bool, interval: float = 5.0) -> None:
    record = _record(s, appliance)
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
        seen: set[tuple[str, str, str, str]] = set()
        while True:
            rows = [r for r in matrix.login_rows(api) if r["user"] != api.user_id(matrix.SERVICE_ACCOUNT)]
            new = [r for r in rows if (r["user"], r["device"], r["ip"], r["last_seen"]) not in seen]
            if new or not follow:
                table = Table("last seen (UTC)", "user", "device", "address", "client", "deactivated")
                for r in new:
                    table.add_row(r["last_seen"], r["user"], r["device"], r["ip"], r["user_agent"], r["deactivated"])
                log.out.print(table)
            seen.update((r["user"], r["device"], r["ip"], r["last_seen"]) for r in new)
            if not follow:
                return
            time.sleep(interval)


def turn_check(s: Settings, appliance: str) -> None:
    import json

    from appliance import turncheck
    from appliance.errors import ExitStatus, die

    record = _record(s, appliance)
    facts = json.loads(record.path("facts.json").read_text())
    with matrix.tunnel(record) as base:
        api = matrix.admin_session(record, base)
    relayed, results = turncheck.check(
        facts["address"], facts["domain"], facts["acme_root"], api.token, facts["address"]
    )
    table = Table("peer", "expected", "coturn said")
    for r in results:
        table.add_row(r.peer, r.expected, r.outcome if r.ok else f"[red]{r.outcome}[/]")
    log.out.print(f"allocation: relayed address {relayed}")
    log.out.print(table)
    if not all(r.ok for r in results):
        die(
            "TURN relaying policy is wrong",
            hint="see denied-peer-ip in /etc/turnserver.conf",
            status=ExitStatus.VERIFY_FAILED,
        )
