"""launch / destroy / ls / images: what every target shares (defaults, confirmation, printing)."""

from __future__ import annotations

import dataclasses
import json
import sys

from appliance import case, log, targets, team, userdata
from appliance.config import Settings
from appliance.errors import ExitStatus, die
from appliance.images import Image
from appliance.state import Record, Store
from appliance.table import Table


def launch(
    s: Settings,
    name: str | None,
    domain: str | None,
    image: str | None,
    keep_on_failure: bool = False,
    federate_with: tuple[str, ...] = (),
    open_federation: bool = False,
) -> Record:
    name = userdata.validate_name(name or s.name)
    target = targets.get(s)
    domain = userdata.validate_domain(domain or s.domain or target.default_domain(name))
    spec = targets.LaunchSpec(
        name=name,
        domain=domain,
        image=image,
        contact_email=s.contact_email or f"security@{domain}",
        federation=team_servers(s, federate_with),
        open_federation=open_federation,
    )
    record = target.launch(spec, keep_on_failure=keep_on_failure)
    # The team's appliances here, running already, take the newcomer into their own lists.
    team.welcome(s, record, federate_with)
    return record


def team_servers(s: Settings, members: tuple[str, ...]) -> tuple[str, ...]:
    """Server names for --federate-with: an appliance of this machine by its name (its domain), or a
    server name (a DNS name) of one elsewhere."""
    store = Store(s.dirs.state)
    servers = []
    for member in members:
        if "." in member:  # appliance names have no dot (contract.json's name pattern)
            servers.append(userdata.validate_domain(member))
        elif record := store.get(member):
            servers.append(record.data["domain"])
        else:
            die(
                f"--federate-with {member}: no appliance of that name here, and not a server name",
                hint="name an appliance from `invoke ls`, or give a server name such as chat.example.org",
                status=ExitStatus.USAGE,
            )
    return tuple(servers)


def print_summary(record: Record) -> None:
    facts = json.loads(record.path("facts.json").read_text())
    d = facts["domain"]
    c = log.out
    accel = f" ({record.data['accel']})" if record.data.get("accel") else ""
    c.print(f"[bold]{record.name}[/] is up on {facts['address']}{accel}")
    c.print(f"  web client   https://element.{d}/  (also riot.{d})")
    c.print(f"  homeserver   https://matrix.{d}/   federation matrix.{d}:8448, server name {d}")
    c.print(f"  SSH host key {facts['host_key_fingerprint']} (pinned in {facts['ssh_config']})")
    c.print(f"  ssh          ssh -F {facts['ssh_config']} {facts['ssh_host']}")
    c.print(f"next: invoke verify --name {record.name}")


def target_for(s: Settings, record: Record) -> targets.Target:
    """The target an existing appliance was launched on (whatever the current default is)."""
    return targets.get(dataclasses.replace(s, target=record.target))


def destroy(s: Settings, name: str, yes: bool, discard_record: bool = False) -> None:
    record = Store(s.dirs.state).get(name)
    if record is None:
        log.console.print(f"no appliance named {name!r}: nothing to destroy")
        return
    if not discard_record:
        held = case.unexported(record)
        if held > 0:
            die(
                f"{name}'s case record holds {held} events no export has taken",
                hint=f"run `invoke case.export --name {name}` first, or pass --discard-record to destroy them",
                status=ExitStatus.USAGE,
            )
    if not yes and sys.stdin.isatty():
        what = "shred its secrets and its case record" if discard_record else "shred its secrets"
        answer = input(f"destroy {name} and {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            die("not destroyed", hint="pass --yes to skip the question", status=ExitStatus.USAGE)
    target_for(s, record).destroy(record)
    log.console.print(f"destroyed {name}")


def stop(s: Settings, name: str) -> None:
    record = Store(s.dirs.state).require(name)
    target_for(s, record).stop(record)
    log.console.print(f"stopped {name} (its disk, address, keys and secrets are kept: `invoke start --name {name}`)")


def start(s: Settings, name: str) -> None:
    record = Store(s.dirs.state).require(name)
    target_for(s, record).start(record)
    log.out.print(f"{name} is up again on {record.data['address']}")


def print_list(s: Settings) -> None:
    records = Store(s.dirs.state).all()
    if not records:
        log.console.print("no appliances")
        return
    table = Table("name", "target", "address", "domain", "status")
    for r in records:
        table.add(r.name, r.target, r.data.get("address", "-"), r.data.get("domain", "-"), target_for(s, r).status(r))
    table.show()


def images(s: Settings, prune: int) -> list[Image]:
    target = targets.get(s)
    if prune:
        if prune < 1:
            die("--prune must keep at least one image", hint="pass --prune 1 or more", status=ExitStatus.USAGE)
        for image in target.prune_images(prune):
            log.console.print(f"removed {image.describe()}")
    found = target.images()
    if not found:
        log.console.print(f"no Outband images for the {target.name} target")
        return found
    table = Table("name", "image")
    for image in found:
        table.add(image.name, image.describe())
    table.show()
    return found
