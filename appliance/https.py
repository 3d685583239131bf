"""Operator-side HTTPS to an appliance: connect to its address, speak TLS for a name, trust a given root.

The names (D, matrix.D…) need not resolve on the operator's machine: the connection goes to the
appliance's address with SNI and certificate checks for the name (urllib3 server_hostname).
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import urllib3


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    address: str,
    port: int,
    name: str,
    path: str,
    ca_file: str,
    method: str = "GET",
    body: Any = None,
    timeout: float = 10.0,
    tls_version: ssl.TLSVersion | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    ctx = ssl.create_default_context(cafile=ca_file)
    if tls_version is not None:
        ctx.minimum_version = ctx.maximum_version = tls_version
    pool = urllib3.HTTPSConnectionPool(
        address,
        port,
        server_hostname=name,
        assert_hostname=name,
        ssl_context=ctx,
        timeout=urllib3.Timeout(total=timeout),
        retries=False,
    )
    try:
        headers = {"Host": name if port == 443 else f"{name}:{port}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        r = pool.request(method, path, body=data, headers=headers)
        return Response(r.status, r.data, {k.lower(): v for k, v in r.headers.items()})
    finally:
        pool.close()


def peer_certificate(address: str, port: int, name: str, ca_file: str) -> dict[str, Any]:
    """The verified peer certificate (as ssl's dict) and the negotiated TLS version."""
    ctx = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection((address, port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=name) as tls,
    ):
        cert = tls.getpeercert()
        return {"cert": cert, "version": tls.version()}
