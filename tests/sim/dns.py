"""The simulated internet's DNS, as a simulated droplet's resolver sees it.

Names in the simulated account's domains are answered from pebble-challtestsrv, where the API
simulator writes records after a propagation delay (an empty answer there becomes NXDOMAIN, as a
real authoritative server says for a name it does not hold: what Let's Encrypt caches for up to a
minute). Every other name goes to this machine's own resolver: a build droplet's apt and pip need
Debian's and PyPI's names.

It listens on 127.0.0.1:53: qemu's user network delivers a guest's UDP to its host address to
the host's 127.0.0.1 on the same port, and resolvers only ever ask port 53.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

LISTEN = ("127.0.0.1", 53)


def host_resolver() -> tuple[str, int]:
    """This machine's first nameserver (what qemu's own DNS would forward to)."""
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1], 53
    return "127.0.0.53", 53


def in_zones(name: str, zones: set[str]) -> bool:
    name = name.rstrip(".").lower()
    return any(name == z or name.endswith("." + z) for z in zones)


def _ask(server: tuple[str, int], query: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, server)
        try:
            return sock.recvfrom(65535)[0]
        except TimeoutError:
            return None


def answer(query: bytes, zones: set[str], authoritative: tuple[str, int], upstream: tuple[str, int]) -> bytes | None:
    """The reply to one raw DNS query (None: no reply, the client retries)."""
    try:
        message = dns.message.from_wire(query)
    except Exception:  # not DNS: say nothing
        return None
    if not message.question:
        return None
    name = message.question[0].name.to_text()
    if not in_zones(name, zones):
        return _ask(upstream, query)
    raw = _ask(authoritative, query)
    if raw is None:
        return None
    reply = dns.message.from_wire(raw)
    if reply.rcode() == dns.rcode.NOERROR and not reply.answer:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    reply.flags |= dns.flags.AA
    return reply.to_wire()


class SimulatedDns:
    def __init__(
        self,
        zones: Callable[[], set[str]],
        authoritative: tuple[str, int],
        listen: tuple[str, int] = LISTEN,
        upstream: tuple[str, int] | None = None,
    ):
        upstream = upstream or host_resolver()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = answer(data, outer.zones(), authoritative, upstream)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        self.zones = zones
        try:
            self.server = socketserver.ThreadingUDPServer(listen, Handler)
        except OSError as e:
            raise RuntimeError(
                f"the simulated DNS cannot listen on {listen[0]}:{listen[1]} ({e}); "
                "a simulated droplet's resolver reaches it only there"
            ) from e
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SimulatedDns:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
