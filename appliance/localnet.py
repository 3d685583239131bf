"""The local target's network between appliances, so that they can federate with each other.

On a cloud every appliance reaches every other by its public name; that is what federation needs,
and the whitelist (not the network) decides who talks to whom. The local target's appliances each
sit behind their own qemu user network (NAT), which no other guest can reach. So each VM gets a
second NIC on one Ethernet segment shared by the appliances of a state directory, and appliance
127.0.100.N is 10.77.0.N there.

The segment is qemu's `-netdev socket,mcast=…,localaddr=127.0.0.1`: each qemu sends its frames to a
multicast group on the host's loopback, and every qemu in the group receives them. Why this way:
it needs nothing configured on the host, and what is sent on the loopback interface never leaves
it; a bridge needs host network configuration, a bridge in a namespace would take qemu's port forwards
off the host's loopback (where the operator, pebble and the tests reach the appliances), and
qemu's guestfwd connects one guest address to one host socket fixed at the VM's start (an
appliance launched later could not be reached). The host itself is not on the segment.

Names: a second pebble-challtestsrv answers the appliances' names with these addresses (the first
answers pebble with their loopback addresses, which mean nothing inside a VM). A VM asks it
through its user network: 10.0.2.2 is the host's loopback there, UDP included. Only names under
the listed domains go to it (systemd-resolved's routing domains); nothing else changes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from appliance import pebble, process
from appliance.net import kept_ports, listening
from appliance.state import private_dir
from appliance.wait import wait_until

GROUP = "239.255.77.1"  # administratively scoped multicast (RFC 2365): never routed off a site
NETWORK = ipaddress.ip_network("10.77.0.0/24")
DEFAULT_SUFFIX = "outband.test"  # the local target's default domains: <name>.outband.test
PORT_NAMES = ("segment", "dns", "management")
UPSTREAM_DNS = "10.0.2.3"  # qemu's user network's DNS, for every other name


@dataclass(frozen=True)
class Segment:
    """What a VM needs to join the segment and resolve the appliances' names on it."""

    mcast: str  # "group:port" for qemu
    resolver: str  # "10.0.2.2:port", the names' DNS as the guest reaches it


def folder(state_root: Path) -> Path:
    return state_root / "localnet"


def ports(state_root: Path) -> dict[str, int]:
    """This state's ports (the segment's and its DNS's), chosen once and kept."""
    return kept_ports(folder(state_root) / "ports.json", PORT_NAMES)


def address(host_address: str) -> str:
    """The appliance's address on the segment: 127.0.100.N → 10.77.0.N."""
    n = int(host_address.rsplit(".", 1)[1])
    return str(NETWORK.network_address + n)


def mac(host_address: str) -> str:
    """A fixed MAC per appliance (qemu's 52:54:00 prefix), so the guest's config can match its NIC."""
    return "52:54:00:77:00:{:02x}".format(int(host_address.rsplit(".", 1)[1]))


def ensure(state_root: Path) -> Segment:
    """Start the names' DNS once per state directory; the segment itself is the VMs'."""
    here = private_dir(folder(state_root))
    p = ports(state_root)
    if not process.running(here / "challtestsrv.pid", "pebble-challtestsrv"):
        process.spawn(
            pebble.challtestsrv_argv(p["dns"], p["management"]),
            here / "challtestsrv.log",
            here / "challtestsrv.pid",
        )
        wait_until(lambda: listening(p["management"]), timeout=15, interval=0.1, what="the appliances' DNS to listen")
    return Segment(f"{GROUP}:{p['segment']}", f"{pebble.GUEST_HOST}:{p['dns']}")


def running(state_root: Path) -> bool:
    return process.running(folder(state_root) / "challtestsrv.pid", "pebble-challtestsrv") is not None


def add_names(state_root: Path, names: list[str], segment_address: str) -> None:
    pebble.set_names(ports(state_root)["management"], names, segment_address)


def remove_names(state_root: Path, names: list[str]) -> None:
    if running(state_root):  # else the DNS is gone already: nothing to clear
        pebble.clear_names(ports(state_root)["management"], names)


def stop(state_root: Path) -> None:
    here = folder(state_root)
    pidfile = here / "challtestsrv.pid"
    pid = process.running(pidfile, "pebble-challtestsrv")
    if pid is not None:
        process.stop(pid, "pebble-challtestsrv")
    pidfile.unlink(missing_ok=True)


def contract_part(host_address: str, segment: Segment, domains: list[str]) -> dict:
    """The launch contract's `appliance_network`: the NIC, its address, and the names' DNS for
    the local target's default suffix and every team server's domain."""
    return {
        "mac": mac(host_address),
        "address": f"{address(host_address)}/{NETWORK.prefixlen}",
        "resolver": segment.resolver,
        "upstream": UPSTREAM_DNS,
        "domains": sorted({DEFAULT_SUFFIX, *domains}),
    }
