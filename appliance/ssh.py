"""SSH to an appliance with its pinned host key: no trust on first use, anywhere."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from appliance import contract
from appliance.errors import OutbandError
from appliance.state import Record, write_private

SSH_USER = contract.SSH_USER
# ssh errors that no amount of waiting for a booting VM fixes.
FATAL_ERRORS = (
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Host key verification failed",
    "too long for Unix domain socket",
    "Bad configuration option",
    "Permission denied (publickey)",
)


def alias(name: str) -> str:
    return f"outband-{name}"


def control_dir() -> Path:
    """Where ssh's connection-sharing sockets live: short, because a Unix socket path (plus the 40
    characters of %C and ssh's 17-character temporary suffix) must fit in 108 bytes; state dirs
    can be long. A private directory per user under the temporary directory."""
    folder = Path(tempfile.gettempdir()) / f"outband-ssh-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise OutbandError(
            f"{folder} is not a private directory of this user", hint="remove it; Outband recreates it with mode 0700"
        )
    return folder


def write_config(record: Record, address: str, port: int, host_public_key: str) -> Path:
    """known_hosts holds exactly the host key we generated and injected; ssh refuses anything else."""
    host = alias(record.name)
    key_type, key_b64 = host_public_key.split()[:2]
    write_private(record.path("known_hosts"), f"{host} {key_type} {key_b64}\n")
    config = f"""Host {host}
    HostName {address}
    Port {port}
    User {SSH_USER}
    HostKeyAlias {host}
    IdentityFile {record.path("operator_ed25519")}
    IdentitiesOnly yes
    UserKnownHostsFile {record.path("known_hosts")}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    HostKeyAlgorithms ssh-ed25519
    BatchMode yes
    ConnectTimeout 10
    LogLevel ERROR
    ControlMaster auto
    ControlPath {control_dir()}/%C
    ControlPersist 120
"""
    return write_private(record.path("ssh_config"), config)


def argv(record: Record, remote: str) -> list[str]:
    """`ssh` to the appliance through its pinned config (known_hosts, key, connection sharing):
    for callers that need their own subprocess (a stream, standard input, bytes)."""
    return ["ssh", "-F", str(record.path("ssh_config")), alias(record.name), remote]


def command(record: Record, remote: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv(record, remote),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def close_master(record: Record) -> None:
    """End the ControlPersist master this machine started for the appliance, if any."""
    if record.path("ssh_config").exists():
        subprocess.run(
            ["ssh", "-F", str(record.path("ssh_config")), "-O", "exit", alias(record.name)],
            capture_output=True,
            timeout=10,
            check=False,
        )


def fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
