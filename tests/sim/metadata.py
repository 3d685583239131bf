#!/usr/bin/env python3
"""A simulated droplet's metadata service, for ONE connection on stdin/stdout.

qemu's user network runs this for every TCP connection the guest opens to 169.254.169.254:80
(`guestfwd=…-cmd:`), the address where DigitalOcean's metadata service answers. It serves the
droplet's metadata (a JSON file the simulator writes, 0600) the way DigitalOcean does: the whole
document at /metadata/v1.json, and each field at its own path (/metadata/v1/hostname,
/metadata/v1/interfaces/public/0/ipv4/address, …). Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The per-path names DigitalOcean uses where its JSON says otherwise.
PATH_NAMES = {"user-data": "user_data", "vendor-data": "vendor_data", "public-keys": "public_keys", "id": "droplet_id"}


def lookup(document: dict[str, Any], path: str) -> tuple[int, str, str]:
    """(status, content type, body) for a request path."""
    if path in ("/metadata/v1.json", "/metadata/v1.json/"):
        public = {k: v for k, v in document.items() if not k.startswith("_")}
        return 200, "application/json", json.dumps(public)
    if not path.startswith("/metadata/v1/"):
        return 404, "text/plain", "not found\n"
    parts = [p for p in path.removeprefix("/metadata/v1/").split("/") if p]
    if parts == ["interfaces", "public", "0", "ipv4", "address"] and "_public_ipv4" in document:
        # The droplet's public address as the world reaches it (the simulator's NAT: see README).
        return 200, "text/plain", document["_public_ipv4"]
    node: Any = document
    for part in parts:
        key = PATH_NAMES.get(part, part)
        if isinstance(node, dict) and key == "address" and "ip_address" in node:
            key = "ip_address"
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return 404, "text/plain", "not found\n"
    if isinstance(node, dict):
        return 200, "text/plain", "\n".join(f"{k}/" if isinstance(v, dict | list) else k for k, v in node.items())
    if isinstance(node, list):
        return 200, "text/plain", "\n".join(str(x) for x in node)
    return 200, "text/plain", str(node)


def main() -> int:
    document = json.loads(Path(sys.argv[1]).read_text())
    request = sys.stdin.buffer.readline().decode("latin-1").split()
    while sys.stdin.buffer.readline() not in (b"\r\n", b"\n", b""):
        pass  # headers: nothing here depends on them
    if len(request) < 2 or request[0] not in ("GET", "HEAD"):
        status, kind, body = 405, "text/plain", "method not allowed\n"
    else:
        status, kind, body = lookup(document, request[1].split("?")[0])
    data = body.encode()
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    sys.stdout.buffer.write(head.encode() + (b"" if request[:1] == ["HEAD"] else data))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
