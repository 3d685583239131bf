"""The local target's ACME CA: Debian's pebble, with pebble-challtestsrv as its DNS, on loopback.

The appliance gets its certificate through exactly the production path (certbot, http-01, a
directory URL); only the directory differs. Pebble's API certificate comes from a small CA made
here (trustme); the guest reaches the host's loopback as 10.0.2.2 (qemu user networking).

One pebble per state directory, on ports chosen when it first starts (kept in its folder): a test
session's own state never meets a developer's running appliances.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import trustme

from appliance import http, log, process
from appliance.net import kept_ports, listening
from appliance.run import require
from appliance.state import private_dir, write_private
from appliance.wait import wait_until

LISTEN = "127.0.0.1"
GUEST_HOST = "10.0.2.2"  # the host's loopback as seen from a qemu user-net guest
PORT_NAMES = ("acme", "management", "dns", "challtest")


@dataclass(frozen=True)
class AcmeCa:
    directory_for_guest: str
    api_ca_pem: str  # trust for pebble's API (certbot in the guest)
    dir: Path
    ports: dict[str, int]

    def root_pem(self) -> str:
        """The root that signs issued certificates (pebble makes a new one each start)."""
        url = f"https://{LISTEN}:{self.ports['management']}/roots/0"
        return http.get(url, ca_file=str(self.dir / "api-ca.pem")).decode()


def folder(state_root: Path) -> Path:
    return state_root / "pebble"


def ports(state_root: Path) -> dict[str, int]:
    """This state's pebble ports, chosen once (free at that time) and kept."""
    return kept_ports(folder(state_root) / "ports.json", PORT_NAMES)


def challtestsrv_argv(dns_port: int, management_port: int) -> list[str]:
    """pebble-challtestsrv as a DNS server only, on loopback, that answers nothing it was not told."""
    return [
        require("pebble-challtestsrv"),
        "-dns01",
        f"{LISTEN}:{dns_port}",
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-management",
        f"{LISTEN}:{management_port}",
        # No made-up answers (its default is 127.0.0.1 for any name).
        "-defaultIPv4",
        "",
        "-defaultIPv6",
        "",
    ]


def pebble_config(acme_port: int, management_port: int, cert: Path, key: Path) -> dict:
    """pebble's configuration: http-01 and tls-alpn-01 validation on the standard ports."""
    return {
        "pebble": {
            "listenAddress": f"{LISTEN}:{acme_port}",
            "managementListenAddress": f"{LISTEN}:{management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": 80,  # http-01 goes to the appliance's own (loopback) address, port 80
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


# No artificial validation delays; nonces are not randomly rejected (pebble's test chaos).
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


def ensure(state_root: Path) -> AcmeCa:
    """Start pebble and its DNS once per state directory (reused by its local appliances)."""
    here = private_dir(folder(state_root))
    p = ports(state_root)
    if not (here / "api-ca.pem").exists():
        ca = trustme.CA(organization_name="Outband local ACME API")
        leaf = ca.issue_cert("localhost", LISTEN, GUEST_HOST)
        write_private(here / "api-ca.pem", ca.cert_pem.bytes())
        write_private(here / "api-cert.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems))
        write_private(here / "api-key.pem", leaf.private_key_pem.bytes())
    config = pebble_config(p["acme"], p["management"], here / "api-cert.pem", here / "api-key.pem")
    write_private(here / "pebble.json", json.dumps(config, indent=2))
    if not process.running(here / "challtestsrv.pid", "pebble-challtestsrv"):
        process.spawn(
            challtestsrv_argv(p["dns"], p["challtest"]),
            here / "challtestsrv.log",
            here / "challtestsrv.pid",
        )
        wait_until(lambda: listening(p["challtest"]), timeout=15, interval=0.1, what="pebble-challtestsrv to listen")
    if not process.running(here / "pebble.pid", "pebble"):
        log.detail("starting pebble (local ACME CA)")
        process.spawn(
            [require("pebble"), "-config", str(here / "pebble.json"), "-dnsserver", f"{LISTEN}:{p['dns']}"],
            here / "pebble.log",
            here / "pebble.pid",
            env=PEBBLE_ENV,
        )
        for port in (p["acme"], p["management"]):
            wait_until(lambda port=port: listening(port), timeout=15, interval=0.1, what=f"pebble on port {port}")
    return AcmeCa(f"https://{GUEST_HOST}:{p['acme']}/dir", (here / "api-ca.pem").read_text(), here, p)


def set_names(management_port: int, names: list[str], address: str) -> None:
    """A pebble-challtestsrv's A records for these names, through its management API."""
    for name in names:
        http.post_json(f"http://{LISTEN}:{management_port}/add-a", {"host": f"{name}.", "addresses": [address]})


def clear_names(management_port: int, names: list[str]) -> None:
    for name in names:
        http.post_json(f"http://{LISTEN}:{management_port}/clear-a", {"host": f"{name}."})


def add_names(state_root: Path, names: list[str], address: str) -> None:
    set_names(ports(state_root)["challtest"], names, address)


def remove_names(state_root: Path, names: list[str]) -> None:
    if not process.running(folder(state_root) / "challtestsrv.pid", "pebble-challtestsrv"):
        return  # the DNS is gone already: nothing to clear
    clear_names(ports(state_root)["challtest"], names)


def stop(state_root: Path) -> None:
    """End pebble and its DNS (our own PIDs only)."""
    here = folder(state_root)
    for name, binary in (("pebble", "pebble"), ("challtestsrv", "pebble-challtestsrv")):
        pidfile = here / f"{name}.pid"
        pid = process.running(pidfile, binary)
        if pid is not None:
            process.stop(pid, binary)
        pidfile.unlink(missing_ok=True)
