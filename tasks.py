"""Outband: bake, launch, verify and destroy disposable Matrix appliances. A thin menu over appliance/."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Context, Exit, task

from appliance import bake as bake_mod
from appliance import case as case_mod
from appliance import launch as launch_mod
from appliance import lock as lock_mod
from appliance import log, reproduce, teamops
from appliance import team as team_mod
from appliance import verify as verify_mod
from appliance.cache import Cache
from appliance.cli import command, quiet_broken_pipes, strict_positionals
from appliance.errors import ExitStatus, die

# `invoke TASK --help` shows the help and never runs the task; a value never starts with "-".
strict_positionals()
quiet_broken_pipes()


@task(
    help={
        "target": "local (default) or digitalocean",
        "webclient": "element (pinned release) or hydrogen (built offline from npm)",
        "via": "local target: chroot (fast, default) or packer (Packer's qemu source, a live system)",
        "no-layer-cache": "re-run every provision script from the (cached) base tree",
        "check": "rebuild the latest local image from scratch with its package versions and compare"
        " (exit 5 if it differs)",
        "json": "with --check: print the differences as JSON",
        "packages-from": "an earlier image (name, qcow2 or manifest): install exactly its Debian package"
        " versions, or fail naming those Debian no longer serves",
    }
)
def bake(
    c: Context,
    target: str | None = None,
    webclient: str | None = None,
    via: str | None = None,
    no_layer_cache: bool = False,
    check: bool = False,
    json: bool = False,
    packages_from: str | None = None,
) -> None:
    """Build a hardened appliance image from Debian packages and pinned artifacts."""
    with command("bake", c, target=target, webclient=webclient) as s:
        if check:
            status = reproduce.check(s, as_json=json)
            if status:
                raise Exit(code=int(status))
            return
        pins = reproduce.pins_from(s, packages_from) if packages_from else None
        image = bake_mod.bake(s, via=via, use_layers=not no_layer_cache, pins=pins)
        log.out.print(f"image:    {image.describe()}")
        log.out.print(f"manifest: {image.manifest}")
        log.out.print(f"sbom:     {image.sbom}")
        log.out.print(f"log:      {log.log_path()}")


@task(help={"only": "comma-separated locks to re-resolve (default: all of them: synapse, recorder)"})
def lock(c: Context, only: str = "") -> None:
    """Re-resolve images/lock/NAME.txt (versions + hashes) for the image's Python."""
    with command("lock", c) as s:
        which = tuple(n.strip() for n in only.split(",") if n.strip()) or tuple(lock_mod.LOCKS)
        lock_mod.lock(s, Cache(s.dirs.cache), which)


@task(
    help={
        "name": "appliance name (default: outband.name)",
        "domain": "its domain D (default: <name>.outband.test on the local target)",
        "image": "image to boot: a qcow2 path (local) or a snapshot name or id (digitalocean); default: the newest",
        "target": "local (default) or digitalocean",
        "keep-on-failure": "debugging: keep a failed appliance for inspection instead of cleaning it up",
        "federate-with": "comma-separated team: appliance names from `invoke ls` (they take this one into"
        " their teams), or server names elsewhere; federation with them only (default: with nobody)",
        "open-federation": "federate with any Matrix server instead of the team only",
    }
)
def launch(
    c: Context,
    name: str | None = None,
    domain: str | None = None,
    image: str | None = None,
    target: str | None = None,
    keep_on_failure: bool = False,
    federate_with: str = "",
    open_federation: bool = False,
) -> None:
    """Boot an appliance with fresh per-launch secrets; returns when it is healthy."""
    with command("launch", c, target=target) as s:
        record = launch_mod.launch(
            s,
            name=name,
            domain=domain,
            image=image,
            keep_on_failure=keep_on_failure,
            federate_with=tuple(m.strip() for m in federate_with.split(",") if m.strip()),
            open_federation=open_federation,
        )
        launch_mod.print_summary(record)


@task(
    name="federate",
    help={
        "name": "appliance name (default: outband.name)",
        "with": "comma-separated servers to add to its team: appliance names from `invoke ls` (they add it"
        " to theirs too), or server names elsewhere",
    },
)
def federate(c: Context, name: str | None = None, with_: str = "") -> None:
    """Add servers to a running appliance's team (Synapse restarts; no relaunch)."""
    members = tuple(m.strip() for m in with_.split(",") if m.strip())
    with command("federate", c) as s:
        if not members:
            die("name the servers to add", hint="pass --with b or --with b,chat.example.org", status=ExitStatus.USAGE)
        team_mod.federate(s, name or s.name, members, launch_mod.team_servers)


@task(help={"name": "appliance name (default: outband.name)"})
def verify(c: Context, name: str | None = None) -> None:
    """Run tests/infra (pytest-testinfra over SSH with the pinned host key) against an appliance."""
    with command("verify", c) as s:
        verify_mod.verify(s, name or s.name)


@task(
    help={
        "name": "appliance name (default: outband.name)",
        "yes": "do not ask for confirmation",
        "discard-record": "destroy even though the case record holds events no `invoke case.export` has taken",
    }
)
def destroy(c: Context, name: str | None = None, yes: bool = False, discard_record: bool = False) -> None:
    """Stop an appliance and remove everything made for it (secrets shredded). Idempotent.
    Refused while its case record holds unexported events (see `invoke case.export`)."""
    with command("destroy", c) as s:
        launch_mod.destroy(s, name or s.name, yes=yes, discard_record=discard_record)


@task(help={"name": "appliance name (default: outband.name)"})
def stop(c: Context, name: str | None = None) -> None:
    """Shut an appliance down cleanly, keeping its disk, address, keys and secrets (see `start`)."""
    with command("stop", c) as s:
        launch_mod.stop(s, name or s.name)


@task(help={"name": "appliance name (default: outband.name)"})
def start(c: Context, name: str | None = None) -> None:
    """Boot a stopped appliance again (e.g. after a host restart); returns when it is healthy."""
    with command("start", c) as s:
        launch_mod.start(s, name or s.name)


@task(name="ls")
def list_(c: Context) -> None:
    """List the appliances known on this machine."""
    with command("ls", c, log_file=False) as s:
        launch_mod.print_list(s)


@task(
    help={
        "runs": "how many times to measure (medians are reported)",
        "cold": "include a cold bake (empty cache)",
        "webclient": "element or hydrogen",
        "journey": "also a browser sign-in and 2×50 end-to-end encrypted messages (browser ↔ nio)",
        "case": "also the case recorder under 1,000 encrypted messages + 20 files, and their case.export",
        "load": "also 20 end-to-end encrypted nio clients sending 100 messages each (issue 19's load)",
        "federation": "also a second appliance as a team: cross-server latency, catch-up after a power cut",
    }
)
def bench(
    c: Context,
    runs: int = 1,
    cold: bool = True,
    webclient: str | None = None,
    journey: bool = False,
    case: bool = False,
    load: bool = False,
    federation: bool = False,
) -> None:
    """Measure bake (cold/warm), image size, launch→verified, destroy, idle memory → BENCHMARKS.md."""
    from appliance import bench as bench_mod

    with command("bench", c, webclient=webclient) as s:
        results, accel = bench_mod.run(
            s, runs=runs, cold=cold, journey=journey, case=case, load=load, federation=federation
        )
        path = bench_mod.write_markdown(s, results, accel)
        log.console.print(path.read_text())


@task(
    iterable=["diff"],
    help={
        "prune": "keep only the newest N images (local: ones in use stay)",
        "target": "local or digitalocean",
        "diff": "an image to compare (name or qcow2 path); give it twice: --diff A --diff B",
        "json": "with --diff: print the differences as JSON",
    },
)
def images(
    c: Context, prune: int = 0, target: str | None = None, diff: list[str] | None = None, json: bool = False
) -> None:
    """List the target's Outband images (local: build/images; digitalocean: snapshots); --prune N keeps the newest N.

    `--diff A --diff B` compares two local images file by file from their content listings (exit 5 if they differ).
    """
    with command("images", c, log_file=False, target=target) as s:
        if diff:
            status = reproduce.diff_images(s, diff, as_json=json)
            if status:
                raise Exit(code=int(status))
            return
        launch_mod.images(s, prune)


APPLIANCE_HELP = "appliance name (default: outband.name)"
JSON_HELP = "print JSON instead of a table"


@task(
    name="add",
    help={
        "user": "the new account's name",
        "admin": "make it a Synapse admin (the incident lead)",
        "name": APPLIANCE_HELP,
    },
)
def user_add(c: Context, user: str, admin: bool = False, name: str | None = None) -> None:
    """Create an account (registration stays off); its password is printed once."""
    with command("user-add", c) as s:
        teamops.user_add(s, name or s.name, user, admin)


@task(name="list", help={"active": "hide deactivated accounts", "json": JSON_HELP, "name": APPLIANCE_HELP})
def user_list(c: Context, active: bool = False, json: bool = False, name: str | None = None) -> None:
    """List the accounts, deactivated ones included (--active hides them)."""
    with command("user-list", c) as s:
        teamops.user_list(s, name or s.name, active, json)


@task(name="devices", help={"user": "account", "json": JSON_HELP, "name": APPLIANCE_HELP})
def user_devices(c: Context, user: str, json: bool = False, name: str | None = None) -> None:
    """An account's devices with their key fingerprints, grouped as clients show them (verify them out of band)."""
    with command("user-devices", c) as s:
        teamops.user_devices(s, name or s.name, user, json)


@task(
    name="deactivate",
    help={"user": "account to deactivate", "erase": "also erase its data (GDPR erasure)", "name": APPLIANCE_HELP},
)
def user_deactivate(c: Context, user: str, erase: bool = False, name: str | None = None) -> None:
    """Deactivate an account: its sessions end and it can no longer sign in."""
    with command("user-deactivate", c) as s:
        teamops.user_deactivate(s, name or s.name, user, erase)


@task(name="reset-password", help={"user": "account", "name": APPLIANCE_HELP})
def user_reset_password(c: Context, user: str, name: str | None = None) -> None:
    """Set a new random password (printed once) and log the account's devices out."""
    with command("user-reset-password", c) as s:
        teamops.user_reset_password(s, name or s.name, user)


@task(
    name="control-room",
    help={
        "members": "comma-separated account names (the lead included)",
        "lead": "the admin account that owns the room (default: the first admin among the members)",
        "name": APPLIANCE_HELP,
        "servers": "comma-separated appliances of one team: #control spans them (made on --name's), the"
        " members found on each are invited, each one's lead joins with power 100 and an alias there",
    },
)
def control_room(c: Context, members: str, lead: str | None = None, name: str | None = None, servers: str = "") -> None:
    """The encrypted, invite-only #control room, owned by the lead, with these members (idempotent)."""
    with command("control-room", c) as s:
        teamops.control_room(
            s,
            name or s.name,
            [m.strip() for m in members.split(",") if m.strip()],
            lead,
            [x.strip() for x in servers.split(",") if x.strip()],
        )


@task(name="members", help={"room": "alias or id (default: control)", "json": JSON_HELP, "name": APPLIANCE_HELP})
def room_members(c: Context, room: str = "control", json: bool = False, name: str | None = None) -> None:
    """Who is in a room (joined, invited, left) and with what power."""
    with command("room-members", c) as s:
        teamops.room_members(s, name or s.name, room, json)


@task(
    help={
        "follow": "keep watching and print new events as they happen",
        "system": "also what auditd recorded: secret reads, config changes, sudo, SSH sign-ins",
        "json": JSON_HELP,
        "name": APPLIANCE_HELP,
    }
)
def audit(c: Context, follow: bool = False, system: bool = False, json: bool = False, name: str | None = None) -> None:
    """Sign-ins (and failed ones), new devices, password resets and deactivations, from the appliance's log;
    with --system also auditd's: reads of the secrets, config changes, sudo, SSH sign-ins."""
    with command("audit", c, log_file=not follow) as s:
        teamops.audit(s, name or s.name, follow, json, system)


@task(name="turn-check", help={"name": APPLIANCE_HELP})
def turn_check(c: Context, name: str | None = None) -> None:
    """Real TURN allocations (UDP, and TLS on 5349) with Synapse's credentials; internal relays refused."""
    with command("turn-check", c) as s:
        teamops.turn_check(s, name or s.name)


@task(
    name="export",
    help={"name": APPLIANCE_HELP, "out": "directory to export into (default: ./cases/NAME); re-runs add what is new"},
)
def case_export(c: Context, name: str | None = None, out: str | None = None) -> None:
    """Pull the case record (every recorded event, decrypted, and its media) over the pinned SSH channel,
    check its hash chain and signature against the case key kept at launch, and render index.html."""
    with command("case-export", c) as s:
        case_mod.export(s, name or s.name, Path(out) if out else None)


@task(
    name="verify",
    help={"folder": "an exported case directory", "key": "the case's public key (default: the one the export kept)"},
)
def case_verify(c: Context, folder: str, key: str | None = None) -> None:
    """Re-check an exported case offline: any changed, missing or reordered line or media file is named."""
    with command("case-verify", c, log_file=False):
        case_mod.verify(Path(folder), key)


cases = Collection("case", case_export, case_verify)
users = Collection("user", user_add, user_list, user_devices, user_deactivate, user_reset_password)
rooms = Collection("room", room_members)
ns = Collection(
    bake,
    launch,
    federate,
    verify,
    stop,
    start,
    destroy,
    list_,
    lock,
    bench,
    images,
    control_room,
    audit,
    turn_check,
    users,
    rooms,
    cases,
)
