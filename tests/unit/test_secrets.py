from __future__ import annotations

import base64

import signedjson.key
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import secrets


def test_signing_key_is_in_synapse_file_format_and_loads_with_signedjson():
    line = secrets.synapse_signing_key()
    algorithm, version, seed = line.split()
    assert algorithm == "ed25519" and version.startswith("a_") and len(version) == 6
    assert "=" not in seed
    keys = signedjson.key.read_signing_keys([line])  # Synapse's own reader of signing.key files
    assert len(keys) == 1
    assert keys[0].version == version
    assert len(base64.b64decode(seed + "=")) == 32


def test_ssh_keys_load_with_cryptography():
    pair = secrets.ssh_keypair("host@test")
    private = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = serialization.load_ssh_public_key(pair.public_openssh.rsplit(" ", 1)[0].encode())
    assert public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert pair.public_openssh.endswith(" host@test")


def test_two_launches_never_share_a_secret_or_key():
    """CVE-2026-24044: a fixed seed gave every install the same signing key."""
    generated = [secrets.generate() for _ in range(50)]
    for field in ("signing_key", "macaroon", "form", "registration_shared", "turn", "db_password"):
        values = [getattr(g, field) for g in generated]
        assert len(set(values)) == len(values), field
    seeds = [g.signing_key.split()[2] for g in generated]
    assert len(set(seeds)) == len(seeds)
    hosts = [secrets.ssh_keypair("h").private_openssh for _ in range(10)]
    assert len(set(hosts)) == len(hosts)


def test_random_secrets_are_long():
    assert len(secrets.random_secret()) >= 43  # 32 bytes, URL-safe base64
