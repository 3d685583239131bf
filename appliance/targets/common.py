"""What both targets do the same way: steps recorded as they run, per-launch identity, the facts
file for tests/infra, and a failed launch's clean-up."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from appliance import contract, log, secrets, ssh, systemd
from appliance.errors import OutbandError, die
from appliance.state import Record, write_private

names = contract.names


@contextlib.contextmanager
def step(record: Record, title: str) -> Iterator[None]:
    """A launch (or destroy) step: shown with its elapsed time, and recorded in the appliance's
    state before it starts, so that a failure — even of a process that died — names it."""
    record.set(step=title)
    with log.step(title):
        try:
            yield
        except OutbandError as e:
            if not e.message.startswith(title):
                e.message = f"{title}: {e.message}"
            raise


@dataclass(frozen=True)
class Identity:
    secrets: secrets.LaunchSecrets
    host_key: secrets.SshKeyPair
    operator: secrets.SshKeyPair


def new_identity(record: Record) -> Identity:
    """Every secret and key of one launch, written to the record's directory (0600) and nowhere else."""
    identity = Identity(
        secrets.generate(), secrets.ssh_keypair(f"host@{record.name}"), secrets.ssh_keypair(f"operator@{record.name}")
    )
    write_private(record.path("secrets.json"), json.dumps(identity.secrets.as_dict(), indent=2))
    write_private(record.path("host_ed25519"), identity.host_key.private_openssh)
    write_private(record.path("host_ed25519.pub"), identity.host_key.public_openssh + "\n")
    write_private(record.path("operator_ed25519"), identity.operator.private_openssh)
    write_private(record.path("operator_ed25519.pub"), identity.operator.public_openssh + "\n")
    return identity


def signing_public_key(signing_key: str) -> str:
    return secrets.ed25519_public(signing_key.split()[2])


def write_facts(record: Record, target: str, address: str, ssh_port: int, identity: Identity, acme_root: str) -> Path:
    """What tests/infra needs to verify the appliance; no secret values (it reads those over SSH)."""
    domain = record.data["domain"]
    facts = {
        "name": record.name,
        "target": target,
        "domain": domain,
        "names": names(domain),
        "address": address,
        "ports": {**contract.PORTS, "ssh": ssh_port},
        "acme_root": acme_root,
        "ssh_config": str(record.path("ssh_config")),
        "ssh_host": ssh.alias(record.name),
        "host_key_fingerprint": ssh.fingerprint(identity.host_key.public_openssh),
        "signing_key_id": "ed25519:" + identity.secrets.signing_key.split()[1],
        "signing_public_key": signing_public_key(identity.secrets.signing_key),
        # The case record's public key, kept here from the launch on: an export is checked against
        # this, never against a key the appliance (or the exported folder) offers.
        "case_public_key": secrets.ed25519_public(identity.secrets.case_key),
        "secrets_file": str(record.path("secrets.json")),
        # Whom it federates with: {"open": bool, "servers": [...]} (absent for an image test's bare boot).
        "federation": record.data.get("federation"),
    }
    return write_private(record.path("facts.json"), json.dumps(facts, indent=2) + "\n")


@contextlib.contextmanager
def undo_on_failure(record: Record, destroy: Callable[[Record], None], keep: bool = False) -> Iterator[None]:
    """A launch that fails (or is interrupted) removes what it made — exactly what the record names.

    `keep` (debugging) leaves a failed appliance for inspection, but never an interrupted one. The
    error names the step the record was at; unexpected exceptions become one OutbandError. A
    clean-up that fails too is reported as a warning: the launch's own cause stays the error (the
    state is kept, so `invoke destroy NAME` can finish the clean-up).
    """
    try:
        yield
    except BaseException as e:
        if keep and not isinstance(e, KeyboardInterrupt):
            log.warn(f"kept the failed appliance for inspection: `invoke destroy {record.name}` removes it")
        else:
            try:
                with log.step("Remove what the failed launch created"):
                    destroy(record)
            except Exception as cleanup:
                log.warn(f"the clean-up failed too ({cleanup}); `invoke destroy {record.name}` tries again")
        if isinstance(e, KeyboardInterrupt | OutbandError):
            raise
        step = record.data.get("step")
        raise OutbandError(f"launch failed{f' at {step!r}' if step else ''}: {e}", hint=f"see {log.log_path()}") from e


def firstboot_state(record: Record) -> str | None:
    """First boot's state over SSH: None while it runs, "ok", or why it failed or never ran."""
    show = ssh.command(
        record,
        "systemctl show -p ActiveState -p ConditionResult -p ConditionTimestampMonotonic outband-firstboot.service",
        timeout=20,
    )
    state = systemd.show_one(show.stdout)
    if state.get("ActiveState") == "failed":
        return "the first-boot unit failed"
    if state.get("ActiveState") == "active":
        return "ok"
    # ConditionResult reads "no" until the conditions are checked: only a check that happened counts.
    checked = state.get("ConditionTimestampMonotonic", "0") not in ("", "0")
    if state.get("ActiveState") == "inactive" and checked and state.get("ConditionResult") == "no":
        return "it did not run: no launch contract on the appliance (cloud-init did not apply the user-data)"
    return None


def first_boot_failed(record: Record, cause: str) -> NoReturn:
    with contextlib.suppress(subprocess.TimeoutExpired):  # the log gets the journal when SSH allows
        journal = ssh.command(
            record, "sudo journalctl -u outband-firstboot.service -n 60 --no-pager -o cat", timeout=30
        )
        log.detail("first-boot journal:\n" + journal.stdout.strip())
    die(
        f"first boot failed on the appliance: {cause}",
        hint=f"ssh -F {record.path('ssh_config')} {ssh.alias(record.name)} journalctl -u outband-firstboot",
    )
