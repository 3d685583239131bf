"""The simulated outside world a DigitalOcean launch talks to, in one context manager:

- the API simulator (tests/sim/api.py) with qemu droplets (tests/sim/droplets.py);
- public DNS: pebble-challtestsrv holds the account's records (written after a propagation delay),
  answered to droplets through SimulatedDns on 127.0.0.1:53;
- Let's Encrypt: two pebble instances, production and staging, each with its own issuing root.
  Their API certificates come from the simulated web PKI, which the stock image trusts the way
  Debian trusts ISRG's roots; the production root plays "publicly trusted" for the operator.

Every server listens on this machine's loopback; droplets reach them through qemu's user network
(169.254.0.2 is this machine for them).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import http, pebble, process
from appliance.net import free_port, listening
from appliance.state import private_dir, write_private
from appliance.wait import wait_until
from tests.sim import droplets as sim_droplets
from tests.sim.api import Simulator, Timing
from tests.sim.dns import SimulatedDns
from tests.sim.stock import Stock


class ChallTestDns:
    """pebble-challtestsrv as the authoritative DNS of the simulated account's zones."""

    def __init__(self, folder: Path):
        self.dns_port, self.management_port = free_port(), free_port()
        self.proc = process.spawn(
            pebble.challtestsrv_argv(self.dns_port, self.management_port),
            folder / "challtestsrv.log",
        )
        wait_until(lambda: listening(self.management_port), timeout=15, interval=0.1, what="pebble-challtestsrv")

    def publish(self, fqdn: str, kind: str, values: list[str]) -> None:
        path = "a" if kind == "A" else "aaaa"
        base = f"http://127.0.0.1:{self.management_port}"
        http.post_json(f"{base}/clear-{path}", {"host": f"{fqdn}."})
        if values:
            http.post_json(f"{base}/add-{path}", {"host": f"{fqdn}.", "addresses": values})

    def stop(self) -> None:
        process.stop(self.proc.pid, "pebble-challtestsrv")


@dataclass
class Acme:
    """One pebble playing a Let's Encrypt environment."""

    name: str
    directory: str  # as a droplet reaches it
    root_file: Path  # the root its certificates chain to
    pid: int


def start_pebble(folder: Path, name: str, stock: Stock, dns_port: int) -> Acme:
    port, management = free_port(), free_port()
    leaf = stock.web_ca.issue_cert("localhost", "127.0.0.1", sim_droplets.GUEST_HOST)
    write_private(folder / f"{name}-cert.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems))
    write_private(folder / f"{name}-key.pem", leaf.private_key_pem.bytes())
    config = pebble.pebble_config(port, management, folder / f"{name}-cert.pem", folder / f"{name}-key.pem")
    write_private(folder / f"{name}.json", json.dumps(config))
    proc = process.spawn(
        ["pebble", "-config", str(folder / f"{name}.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
        folder / f"{name}.log",
        env=pebble.PEBBLE_ENV,
    )
    wait_until(lambda: listening(management), timeout=15, interval=0.1, what=f"pebble ({name})")
    web_ca = folder / "web-ca.pem"
    web_ca.write_bytes(stock.web_ca.cert_pem.bytes())
    root = http.get(f"https://127.0.0.1:{management}/roots/0", ca_file=str(web_ca))
    root_file = folder / f"{name}-root.pem"
    root_file.write_bytes(root)
    return Acme(name, f"https://{sim_droplets.GUEST_HOST}:{port}/dir", root_file, proc.pid)


@dataclass
class World:
    api: Simulator
    machines: sim_droplets.QemuMachines
    production: Acme
    staging: Acme
    folder: Path


@contextlib.contextmanager
def world(
    folder: Path, stock: Stock, accel: str, zones: tuple[str, ...], timing: Timing | None = None
) -> Iterator[World]:
    folder = private_dir(folder)
    authority = ChallTestDns(folder)
    acmes: list[Acme] = []
    try:
        acmes = [start_pebble(folder, n, stock, authority.dns_port) for n in ("production", "staging")]
        machines = sim_droplets.QemuMachines(folder, stock.image, accel)
        with (
            Simulator(folder, zones=zones, timing=timing, machines=machines, dns=authority) as api,
            SimulatedDns(lambda: set(api.state.domains), ("127.0.0.1", authority.dns_port)),
        ):
            yield World(api, machines, acmes[0], acmes[1], folder)
    finally:
        for acme in acmes:
            process.stop(acme.pid, "pebble")
        authority.stop()
