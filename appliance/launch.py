"""launch / destroy / ls: target-independent parts (defaults, confirmation, printing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.table import Table

from appliance import bake, log, targets, userdata
from appliance.config import Settings
from appliance.errors import ExitStatus, die
from appliance.state import Record, Store


def launch(
    s: Settings, name: str | None, domain: str | None, image: str | None, keep_on_failure: bool = False
) -> Record:
    name = userdata.validate_name(name or s.name)
    domain = userdata.validate_domain(domain or s.domain or f"{name}.outband.test")
    if s.target == "digitalocean":
        image_path = Path(image) if image else None  # a snapshot name or id; None: the newest
    elif image:
        image_path = Path(image)
    else:
        latest = bake.latest(s)
        if latest is None:
            die(
                "no baked image on this machine",
                hint="run `invoke bake` first, or pass --image PATH",
                status=ExitStatus.USAGE,
            )
        image_path = latest.path
    spec = targets.LaunchSpec(
        name=name, domain=domain, image=image_path, contact_email=s.contact_email or f"security@{domain}"
    )
    return targets.get(s).launch(spec, keep_on_failure=keep_on_failure)


def print_summary(record: Record) -> None:
    facts = json.loads(record.path("facts.json").read_text())
    d = facts["domain"]
    c = log.out
    c.print(f"[bold]{record.name}[/] is up on {facts['address']} ({record.data.get('accel')})")
    c.print(f"  web client   https://element.{d}/  (also riot.{d})")
    c.print(f"  homeserver   https://matrix.{d}/   federation matrix.{d}:8448, server name {d}")
    c.print(f"  SSH host key {facts['host_key_fingerprint']} (pinned in {facts['ssh_config']})")
    c.print(f"  ssh          ssh -F {facts['ssh_config']} {facts['ssh_host']}")
    c.print(f"next: invoke verify --name {record.name}")


def destroy(s: Settings, name: str, yes: bool) -> None:
    store = Store(s.dirs.state)
    record = store.get(name)
    if record is None:
        log.console.print(f"no appliance named {name!r}: nothing to destroy")
        return
    if not yes and sys.stdin.isatty():
        answer = input(f"destroy {name} and shred its secrets? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            die("not destroyed", hint="pass --yes to skip the question", status=ExitStatus.USAGE)
    target = targets.get(_with_target(s, record.target))
    target.destroy(record)
    log.console.print(f"destroyed {name}")


def _with_target(s: Settings, target: str) -> Settings:
    from dataclasses import replace

    return replace(s, target=target)


def print_list(s: Settings) -> None:
    records = Store(s.dirs.state).all()
    table = Table("name", "target", "address", "domain", "status")
    for r in records:
        status = targets.get(_with_target(s, r.target)).status(r)
        table.add_row(r.name, r.target, r.data.get("address", "-"), r.data.get("domain", "-"), status)
    if records:
        log.out.print(table)
    else:
        log.out.print("no appliances")
