"""Per-launch secrets and keys, generated on the operator's side from the OS CSPRNG.

Lesson from CVE-2026-24044 (ESS Helm): a generator seeded from a fixed value gave every install
the same signing key. Everything here comes from `secrets`/`cryptography` (os.urandom) only, and
the tests check that two launches never share a value.
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class SshKeyPair:
    private_openssh: str
    public_openssh: str


@dataclass(frozen=True)
class LaunchSecrets:
    signing_key: str  # Synapse's file format: "ed25519 a_<4 letters/digits> <unpadded base64 seed>"
    macaroon: str
    form: str
    registration_shared: str
    turn: str
    db_password: str
    case_key: str  # the case record's signing key (ed25519 seed, unpadded base64); the launcher keeps its public half

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def random_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def synapse_signing_key() -> str:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    key_id = "a_" + "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(4))
    return f"ed25519 {key_id} {base64.b64encode(seed).decode().rstrip('=')}"


def ed25519_seed() -> str:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(seed).decode().rstrip("=")


def ed25519_public(seed_b64: str) -> str:
    """The public half of an unpadded-base64 ed25519 seed, unpadded base64 too."""
    public = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64 + "=")).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode().rstrip("=")


def ssh_keypair(comment: str) -> SshKeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return SshKeyPair(private, f"{public} {comment}")


def generate() -> LaunchSecrets:
    return LaunchSecrets(
        signing_key=synapse_signing_key(),
        macaroon=random_secret(),
        form=random_secret(),
        registration_shared=random_secret(),
        turn=random_secret(),
        db_password=random_secret(24),
        case_key=ed25519_seed(),
    )
