"""turn-check: TURN as a calling client sees it — credentials from Synapse, a real allocation on
coturn over each URI Synapse hands out (UDP 3478, and TLS on 5349 through nginx), and proof that
relaying into internal networks is refused.

Credentials come from /_matrix/client/v3/voip/turnServer (what Element asks before a call). The
allocation and CreatePermission requests use aioice's TURN client (long-term credentials, message
integrity). A CreatePermission only installs a permission on coturn: no packet goes to the peer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from appliance import https
from appliance.errors import ExitStatus, die

# Peers coturn must refuse (denied-peer-ip): loopback, private, cloud metadata.
DENIED_PEERS = ["127.0.0.1", "10.0.0.1", "169.254.169.254"]


@dataclass(frozen=True)
class PeerResult:
    peer: str
    expected: str  # "allowed" | "refused"
    outcome: str  # "allowed" | "refused (403 Forbidden IP)" | …

    @property
    def ok(self) -> bool:
        return self.outcome.startswith(self.expected)


def turn_credentials(address: str, domain: str, ca_file: str, token: str) -> dict:
    r = https.request(
        address,
        443,
        f"matrix.{domain}",
        "/_matrix/client/v3/voip/turnServer",
        ca_file,
        headers={"Authorization": f"Bearer {token}"},
    )
    if r.status != 200 or not r.json().get("uris"):
        die(
            f"Synapse gave no TURN credentials ({r.status}: {r.body[:120]!r})",
            hint="check turn_uris and turn_shared_secret_path on the appliance",
        )
    return r.json()


@dataclass(frozen=True)
class TlsAllocation:
    relayed: str  # "address:port" coturn relays from
    version: str  # the TLS version the client got on 5349, e.g. "TLSv1.3"


async def allocate_over_tls(
    server: tuple[str, int], server_name: str, ca_file: str, username: str, password: str
) -> TlsAllocation:
    """An allocation over TURN-over-TLS (turns:…?transport=tcp), the way a browser behind a
    firewall that lets only TLS out makes one; the certificate is checked for the server's name."""
    context = ssl.create_default_context(cafile=ca_file)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        lambda: TurnClientTcpProtocol(
            server, username=username, password=password, lifetime=600, channel_refresh_time=300
        ),
        *server,
        ssl=context,
        server_hostname=server_name,
    )
    try:
        relayed_host, relayed_port = await protocol.connect()
        version = transport.get_extra_info("ssl_object").version()
        await protocol.delete()
        return TlsAllocation(f"{relayed_host}:{relayed_port}", version)
    finally:
        transport.close()


async def _check(server: tuple[str, int], username: str, password: str, allowed_peer: str) -> tuple[str, list]:
    # aioice's TURN client protocol directly: its public connect()/request_with_retry() let us send
    # CreatePermission and read coturn's error codes (the TurnTransport wrapper hides them).
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            server, username=username, password=password, lifetime=600, channel_refresh_time=300
        ),
        remote_addr=server,
    )
    try:
        relayed_host, relayed_port = await protocol.connect()
        results = []
        for peer, expected in [(allowed_peer, "allowed"), *[(p, "refused") for p in DENIED_PEERS]]:
            request = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
            request.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
            try:
                await protocol.request_with_retry(request)
                outcome = "allowed"
            except stun.TransactionFailed as e:
                code, reason = e.response.attributes.get("ERROR-CODE", (0, "?"))
                outcome = f"refused ({code} {reason})"
            except stun.TransactionTimeout:
                outcome = "no answer"
            results.append(PeerResult(peer, expected, outcome))
        await protocol.delete()
        return f"{relayed_host}:{relayed_port}", results
    finally:
        transport.close()


def check(
    address: str, domain: str, ca_file: str, token: str, public_ip: str, turns_port: int
) -> tuple[str, list[PeerResult], TlsAllocation]:
    creds = turn_credentials(address, domain, ca_file, token)
    for scheme, transport in (("turn:", "transport=udp"), ("turns:", "transport=tcp")):
        if not any(u.startswith(scheme) and transport in u for u in creds["uris"]):
            die(
                f"no {scheme}…?{transport} URI among {creds['uris']}",
                hint="check turn_uris",
                status=ExitStatus.VERIFY_FAILED,
            )
    # The URIs name matrix.D; on this machine that is the appliance's own address.
    try:
        relayed, peers = asyncio.run(
            asyncio.wait_for(_check((address, 3478), creds["username"], creds["password"], public_ip), timeout=60)
        )
    except (ConnectionError, stun.TransactionError, TimeoutError) as e:
        die(
            f"TURN allocation on {address}:3478 failed: {e!r}",
            hint="is coturn running? `invoke verify`",
            status=ExitStatus.VERIFY_FAILED,
        )
    try:
        over_tls = asyncio.run(
            asyncio.wait_for(
                allocate_over_tls(
                    (address, turns_port), f"matrix.{domain}", ca_file, creds["username"], creds["password"]
                ),
                timeout=60,
            )
        )
    except (OSError, stun.TransactionError, TimeoutError) as e:  # ssl.SSLError is an OSError
        die(
            f"TURN allocation over TLS on {address}:{turns_port} failed: {e!r}",
            hint="nginx terminates TLS there and passes TURN to coturn on 127.0.0.1:3478; `invoke verify`",
            status=ExitStatus.VERIFY_FAILED,
        )
    return relayed, peers, over_tls
