"""A team of appliances: the servers each one federates with, changed on running appliances.

An appliance launched with --federate-with a,b holds a and b in its own list from its first boot;
a and b, running already, must hold it too. They are changed over the operator's pinned SSH channel
(images/files/usr/local/lib/outband/federation-team: Synapse's list, then a restart of Synapse).
"""

from __future__ import annotations

import json
import shlex

from appliance import log, ssh
from appliance.config import Settings
from appliance.errors import ExitStatus, die
from appliance.state import Record, Store, write_private

TEAM_SCRIPT = "/usr/local/lib/outband/federation-team"


def members_here(s: Settings, members: tuple[str, ...]) -> list[Record]:
    """The appliances of this machine among --federate-with's members (names without a dot)."""
    store = Store(s.dirs.state)
    return [r for m in members if "." not in m and (r := store.get(m)) is not None]


def apply(record: Record, servers: list[str]) -> list[str]:
    """Make `servers` the appliance's team (its own name stays); returns the team it now has."""
    team = record.data.get("federation") or {}
    if team.get("open"):
        log.info(f"{record.name} federates openly: nothing to change there")
        return team.get("servers", [])
    result = ssh.command(record, f"sudo {TEAM_SCRIPT} {shlex.join(sorted(set(servers)))}", timeout=300)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        die(
            f"could not change the team on {record.name}: {why}",
            hint=f"is it running? `invoke verify --name {record.name}`",
            status=ExitStatus.USAGE if result.returncode == 2 else ExitStatus.ERROR,
        )
    now = json.loads(result.stdout.strip().splitlines()[-1])["servers"]
    record.set(federation={**team, "open": False, "servers": now})
    _update_facts(record)
    return now


def _update_facts(record: Record) -> None:
    """facts.json holds the team for `invoke verify`."""
    path = record.path("facts.json")
    if path.exists():
        facts = json.loads(path.read_text())
        facts["federation"] = record.data["federation"]
        write_private(path, json.dumps(facts, indent=2) + "\n")


def welcome(s: Settings, newcomer: Record, members: tuple[str, ...]) -> None:
    """After `newcomer` was launched with --federate-with `members`: each of them that is an
    appliance here adds it to its own team."""
    for member in members_here(s, members):
        servers = (member.data.get("federation") or {}).get("servers", [])
        if newcomer.data["domain"] in servers:
            continue
        with log.step(f"Add {newcomer.data['domain']} to {member.name}'s team (Synapse restarts)"):
            apply(member, [*servers, newcomer.data["domain"]])


def federate(s: Settings, name: str, servers: tuple[str, ...], team_servers) -> None:
    """`invoke federate --name a --with b,c`: b and c join a's team; those that are appliances here
    add a to theirs."""
    record = Store(s.dirs.state).require(name)
    added = team_servers(s, servers)
    current = (record.data.get("federation") or {}).get("servers", [record.data["domain"]])
    now = apply(record, [*current, *added])
    welcome(s, record, servers)
    log.out.print(f"{name} federates with: {', '.join(now)}")
