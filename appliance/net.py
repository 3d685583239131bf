"""Ports on this machine's loopback: is one free to bind, pick a free one, is something listening."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

from appliance.state import write_private

LOOPBACK = "127.0.0.1"


def port_free(address: str, proto: str, port: int) -> bool:
    """Could this process bind (address, port) now? Another appliance, another state directory's
    appliance or anything else may hold it."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port the kernel says is free (free a moment ago: whoever binds it next wins)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def listening(port: int, address: str = LOOPBACK) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((address, port)) == 0


def kept_ports(file: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Loopback ports for a helper of one state directory (pebble, the appliances' DNS), chosen
    once (free at that time) and kept in `file`: a test session's helpers never meet a developer's."""
    if file.exists():
        return json.loads(file.read_text())
    chosen = {name: free_port() for name in names}
    write_private(file, json.dumps(chosen))
    return chosen
