"""The local target's ACME CA: Debian's pebble, with pebble-challtestsrv as its DNS, on loopback.

The appliance gets its certificate through exactly the production path (certbot, http-01, a
directory URL); only the directory differs. Pebble's API certificate comes from a small CA made
here (trustme); the guest reaches the host's loopback as 10.0.2.2 (qemu user networking).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from appliance import log
from appliance.errors import die
from appliance.run import require
from appliance.state import private_dir, write_private

LISTEN = "127.0.0.1"
ACME_PORT = 14000
MANAGEMENT_PORT = 15000
DNS_PORT = 8053
CHALLTEST_PORT = 8055
GUEST_HOST = "10.0.2.2"  # the host's loopback as seen from a qemu user-net guest


@dataclass(frozen=True)
class AcmeCa:
    directory_for_guest: str
    api_ca_pem: str  # trust for pebble's API (certbot in the guest)
    dir: Path

    def root_pem(self) -> str:
        """The root that signs issued certificates (pebble makes a new one each start)."""
        ctx = ssl.create_default_context(cafile=str(self.dir / "api-ca.pem"))
        url = f"https://{LISTEN}:{MANAGEMENT_PORT}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as response:  # our own https endpoint
            return response.read().decode()


def _running(pidfile: Path, binary: str) -> bool:
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return cmdline.endswith(binary)


def _spawn(argv: list[str], pidfile: Path, logfile: Path, env: dict[str, str] | None = None) -> None:
    fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    finally:
        os.close(fd)
    pidfile.write_text(f"{proc.pid}\n")


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((LISTEN, port)) == 0:
                return
        time.sleep(0.1)
    die(f"the local ACME CA did not start listening on {LISTEN}:{port}", hint="see the pebble logs in the state dir")


def ensure(state_root: Path) -> AcmeCa:
    """Start pebble and its DNS once per machine (reused by every local appliance)."""
    folder = private_dir(state_root / "pebble")
    if not (folder / "api-ca.pem").exists():
        ca = trustme.CA(organization_name="Outband local ACME API")
        leaf = ca.issue_cert("localhost", LISTEN, GUEST_HOST)
        write_private(folder / "api-ca.pem", ca.cert_pem.bytes())
        write_private(folder / "api-cert.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems))
        write_private(folder / "api-key.pem", leaf.private_key_pem.bytes())
    config = {
        "pebble": {
            "listenAddress": f"{LISTEN}:{ACME_PORT}",
            "managementListenAddress": f"{LISTEN}:{MANAGEMENT_PORT}",
            "certificate": str(folder / "api-cert.pem"),
            "privateKey": str(folder / "api-key.pem"),
            "httpPort": 80,  # http-01 goes to the appliance's own loopback address, port 80
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    write_private(folder / "pebble.json", json.dumps(config, indent=2))
    if not _running(folder / "challtestsrv.pid", "pebble-challtestsrv"):
        _spawn(
            [
                require("pebble-challtestsrv"),
                "-dns01",
                f"{LISTEN}:{DNS_PORT}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"{LISTEN}:{CHALLTEST_PORT}",
                "-defaultIPv6",
                "",
            ],
            folder / "challtestsrv.pid",
            folder / "challtestsrv.log",
        )
        _wait_port(CHALLTEST_PORT)
    if not _running(folder / "pebble.pid", "pebble"):
        log.detail("starting pebble (local ACME CA)")
        # No artificial validation delays; nonces are not randomly rejected (pebble's test chaos).
        _spawn(
            [require("pebble"), "-config", str(folder / "pebble.json"), "-dnsserver", f"{LISTEN}:{DNS_PORT}"],
            folder / "pebble.pid",
            folder / "pebble.log",
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        )
        _wait_port(ACME_PORT)
        _wait_port(MANAGEMENT_PORT)
    return AcmeCa(f"https://{GUEST_HOST}:{ACME_PORT}/dir", (folder / "api-ca.pem").read_text(), folder)


def _challtest(path: str, body: dict) -> None:
    request = urllib.request.Request(
        f"http://{LISTEN}:{CHALLTEST_PORT}/{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5):  # noqa: S310 -- loopback management API
        pass


def add_names(names: list[str], address: str) -> None:
    for name in names:
        _challtest("add-a", {"host": f"{name}.", "addresses": [address]})


def remove_names(names: list[str]) -> None:
    for name in names:
        try:
            _challtest("clear-a", {"host": f"{name}."})
        except OSError:
            return  # the DNS is gone already: nothing to clear


def stop(state_root: Path) -> None:
    """End pebble and its DNS (our own PIDs only)."""
    folder = state_root / "pebble"
    for name, binary in (("pebble", "pebble"), ("challtestsrv", "pebble-challtestsrv")):
        pidfile = folder / f"{name}.pid"
        if _running(pidfile, binary):
            os.kill(int(pidfile.read_text()), 15)
        pidfile.unlink(missing_ok=True)
