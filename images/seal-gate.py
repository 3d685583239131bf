#!/usr/bin/env python3
"""Seal gate: FAIL if an image tree still holds anything per-machine, per-build or secret.

Runs last on every bake path: against the root tree on the builder (`--root TREE`) and inside a
live build VM (`--root /`). Standard library only, so it runs on any Debian.
Exit 0 when sealed; exit 1 with one line per finding otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from pathlib import Path

# A real key: the BEGIN line, optional PEM headers, then base64 lines (binaries such as ssh-keygen
# only hold the marker string).
PRIVATE_KEY = re.compile(
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\n(?:[A-Za-z-]+: [^\n]*\r?\n|\r?\n)*[A-Za-z0-9+/=]{40,}\r?\n"
)
# Synapse signing keys: "ed25519 <key id> <unpadded base64 seed>"
SIGNING_KEY = re.compile(rb"^ed25519 [A-Za-z0-9_]+ [A-Za-z0-9+/]{43}\s*$", re.MULTILINE)
SKIP_DIRS = {"proc", "sys", "dev", "run"}
# Public test fixtures that ship inside Python packages (twisted, cryptography, pycryptodome's
# SelfTest…), as sources or their byte-compiled copies: not secrets.
FIXTURE = re.compile(
    r"/(?:site|dist)-packages/.*/(?:tests?|testing|SelfTest|test_\w+)(?:/|\.py$|\.cpython-\d+\.pyc$)"
    # Synapse's manhole (disabled here) embeds a fixed, published SSH key in its source.
    r"|/site-packages/synapse/util/(?:__pycache__/)?manhole[.\w-]*\.pyc?$"
)
SCAN_LIMIT = 1 << 20
SECRET_FILES = [
    "etc/outband/launch.json",
    "var/lib/cloud/instance/user-data.txt",
    "var/lib/cloud/instance/obj.pkl",
    "var/lib/cloud/seed",
    "etc/letsencrypt/live",
    "etc/letsencrypt/accounts",
]


def pem_body(pem: bytes) -> bytes:
    """The base64 body of a PEM certificate, whitespace removed, for searching bundles."""
    lines = [line.strip() for line in pem.splitlines()]
    inside = [line for line in lines if line and not line.startswith(b"-----")]
    return b"".join(inside)


CONTRACT = "usr/local/lib/outband/contract.json"
RESOLVER_STUB = "../run/systemd/resolve/stub-resolv.conf"


def boot_contract(root: Path) -> list[str]:
    """What every appliance's first boot relies on, whichever image it was baked from: the SSH user
    the launcher logs in as (with sudo, no password) and a resolver that answers (networkd feeds
    resolved, resolv.conf points at its stub)."""
    out: list[str] = []
    try:
        user = json.loads((root / CONTRACT).read_text())["constants"]["ssh_user"]
    except (OSError, ValueError, KeyError):
        return [f"the contract file /{CONTRACT} is missing or unreadable"]
    passwd = (root / "etc/passwd").read_text() if (root / "etc/passwd").exists() else ""
    if not any(line.split(":")[0] == user for line in passwd.splitlines()):
        out.append(f"the SSH user {user!r} does not exist")
    sudoers = root / "etc/sudoers.d/90-outband"
    if not sudoers.exists() or user not in sudoers.read_text():
        out.append(f"the SSH user {user!r} has no sudo rule in /etc/sudoers.d/90-outband")
    cfg = root / "etc/cloud/cloud.cfg.d/99-outband.cfg"
    if not cfg.exists() or f"name: {user}" not in cfg.read_text():
        out.append(f"cloud-init's settings (/etc/cloud/cloud.cfg.d/99-outband.cfg) do not name {user!r}")
    resolv = root / "etc/resolv.conf"
    if not resolv.is_symlink() or str(resolv.readlink()) != RESOLVER_STUB:
        out.append(f"/etc/resolv.conf does not point at systemd-resolved's stub ({RESOLVER_STUB})")
    wants = list((root / "etc/systemd/system").glob("*.wants"))
    for unit in ("systemd-resolved.service", "systemd-networkd.service"):
        # is_symlink: the links point into the image (/usr/lib/…), not at this machine's files.
        if not any((w / unit).is_symlink() or (w / unit).exists() for w in wants):
            out.append(f"{unit} is not enabled")
    for leftover in ("etc/network/interfaces.d/50-cloud-init", "etc/netplan/50-cloud-init.yaml"):
        if (root / leftover).exists():
            out.append(f"the build machine's network config is left: /{leftover}")
    return out


def findings(root: Path, forbidden_cas: list[bytes]) -> list[str]:
    out: list[str] = boot_contract(root)

    for key in sorted((root / "etc/ssh").glob("ssh_host_*")):
        out.append(f"SSH host key present: /{key.relative_to(root)}")

    for path in SECRET_FILES:
        if (root / path).exists():
            out.append(f"per-launch secret or user-data present: /{path}")
    instances = root / "var/lib/cloud/instances"
    if instances.is_dir() and any(instances.iterdir()):
        out.append("cloud-init instance state present: /var/lib/cloud/instances")

    machine_id = root / "etc/machine-id"
    if machine_id.exists() and machine_id.read_text().strip() not in ("", "uninitialized"):
        out.append("machine-id is initialized: /etc/machine-id")

    shadow = root / "etc/shadow"
    if shadow.exists():
        for line in shadow.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 1 and fields[1] and not fields[1].startswith(("!", "*")):
                out.append(f"password hash for user {fields[0]} in /etc/shadow")

    for extra in sorted((root / "usr/local/share/ca-certificates").rglob("*")):
        if extra.is_file():
            out.append(f"extra CA certificate present: /{extra.relative_to(root)}")
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    if forbidden_cas and bundle.exists():
        flat = b"".join(bundle.read_bytes().split())
        for ca in forbidden_cas:
            if pem_body(ca) and pem_body(ca) in flat:
                out.append("a build-time extra CA is still in /etc/ssl/certs/ca-certificates.crt")

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path():
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            rel = "/" + str(path.relative_to(root))
            if name == "authorized_keys" or name == "authorized_keys2":
                out.append(f"authorized keys present: {rel}")
                continue
            if name.endswith("_history") and path.stat().st_size > 0:
                out.append(f"shell history present: {rel}")
                continue
            if FIXTURE.search(rel) or path.is_symlink() or not path.is_file():
                continue
            try:
                if path.stat().st_size > SCAN_LIMIT:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if PRIVATE_KEY.search(data):
                out.append(f"private key in {rel}")
            elif SIGNING_KEY.search(data):
                out.append(f"Synapse signing key in {rel}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument(
        "--forbid-ca",
        type=Path,
        action="append",
        default=[],
        help="a build-time CA certificate (PEM) that must not remain trusted",
    )
    parser.add_argument("--forbid-ca-b64", action="append", default=[], help="the same, as base64 of the PEM file")
    args = parser.parse_args(argv)
    cas = [p.read_bytes() for p in args.forbid_ca] + [base64.b64decode(b) for b in args.forbid_ca_b64]
    problems = findings(args.root, cas)
    for problem in problems:
        print(f"seal gate: {problem}", file=sys.stderr)
    if problems:
        print(f"seal gate: FAILED with {len(problems)} finding(s)", file=sys.stderr)
        return 1
    print("seal gate: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
