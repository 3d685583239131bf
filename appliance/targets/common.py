"""What both targets do the same way: per-launch identity, the facts file for tests/infra."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import log, secrets, ssh
from appliance.errors import OutbandError
from appliance.state import Record, write_private


def names(domain: str) -> list[str]:
    """One certificate and one set of DNS records cover all of these."""
    return [domain, f"matrix.{domain}", f"element.{domain}", f"riot.{domain}"]


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
    seed = base64.b64decode(signing_key.split()[2] + "=")
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode().rstrip("=")


def write_facts(record: Record, target: str, address: str, ssh_port: int, identity: Identity, acme_root: str) -> Path:
    """What tests/infra needs to verify the appliance; no secret values (it reads those over SSH)."""
    domain = record.data["domain"]
    facts = {
        "name": record.name,
        "target": target,
        "domain": domain,
        "names": names(domain),
        "address": address,
        "ports": {"https": 443, "federation": 8448, "turn": 3478, "turns": 5349, "ssh": ssh_port},
        "acme_root": acme_root,
        "ssh_config": str(record.path("ssh_config")),
        "ssh_host": ssh.alias(record.name),
        "host_key_fingerprint": ssh.fingerprint(identity.host_key.public_openssh),
        "signing_key_id": "ed25519:" + identity.secrets.signing_key.split()[1],
        "signing_public_key": signing_public_key(identity.secrets.signing_key),
        "secrets_file": str(record.path("secrets.json")),
    }
    return write_private(record.path("facts.json"), json.dumps(facts, indent=2) + "\n")


@contextlib.contextmanager
def undo_on_failure(record: Record, destroy: Callable[[Record], None], keep: bool = False) -> Iterator[None]:
    """A launch that fails (or is interrupted) removes what it made — exactly what the record names.

    `keep` (debugging) leaves a failed appliance for inspection, but never an interrupted one. The
    error names the step the record was at; unexpected exceptions become one OutbandError.
    """
    try:
        yield
    except BaseException as e:
        if keep and not isinstance(e, KeyboardInterrupt):
            log.warn(f"kept the failed appliance for inspection: `invoke destroy {record.name}` removes it")
        else:
            with log.step("Remove what the failed launch created"):
                destroy(record)
        if isinstance(e, KeyboardInterrupt | OutbandError):
            raise
        step = record.data.get("step")
        raise OutbandError(f"launch failed{f' at {step!r}' if step else ''}: {e}", hint=f"see {log.log_path()}") from e
