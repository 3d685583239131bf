"""Simulated droplets: each one a qemu VM booted from its image the way DigitalOcean boots one.

- Firmware and GRUB from the image's own disk (a virtio disk), as on a droplet: no kernel from
  outside, no NoCloud seed, no `ds=` on a kernel command line.
- SMBIOS system vendor "DigitalOcean" and the droplet's ID as its serial number: what cloud-init's
  DigitalOcean datasource (and ds-identify) look for.
- DigitalOcean's metadata service at 169.254.169.254:80: qemu's user network hands every guest
  connection to that address to tests/sim/metadata.py, which answers from this droplet's metadata.
  The guest's network is 169.254.0.0/16 so that the datasource's link-local address reaches it
  before any network is configured (qemu answers ARP only inside its virtual network).
- A public address: a loopback address of this machine (127.0.101.N) with the droplet's ports
  forwarded to it — SSH on 22, like a droplet. The guest sits behind qemu's NAT, so the address on
  its NIC (169.254.0.15) is not its public one; see README.md for the one consequence.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from appliance import contract, process, qemu
from appliance.net import port_free
from appliance.state import shred, write_private

QEMU = "qemu-system-x86_64"
METADATA_SCRIPT = Path(__file__).resolve().parent / "metadata.py"
GUEST_NET = "169.254.0.0/16"
GUEST_HOST = "169.254.0.2"  # this machine, as the guest sees it (qemu's user network)
GUEST_ADDRESS = "169.254.0.15"
# The simulated DNS (SimulatedDns on this machine's 127.0.0.1:53): qemu delivers a guest's UDP to its
# host address to 127.0.0.1 on the same port (and answers ARP only for its own addresses).
GUEST_DNS = GUEST_HOST
METADATA = contract.constants()["metadata"]["address"]


def forwards() -> list[tuple[str, int]]:
    ports = contract.PORTS
    tcp = [("tcp", ports[k]) for k in ("ssh", "http", "https", "federation", "turn", "turns")]
    udp = [("udp", ports[k]) for k in ("turn", "turns")] + [("udp", p) for p in contract.RELAY_PORTS]
    return tcp + udp


class QemuMachines:
    def __init__(self, work: Path, stock_image: Path, accel: str, cpus: int = 2, memory_mb: int = 2048):
        self.work = work
        self.stock_image = stock_image
        self.accel = accel
        self.cpus, self.memory_mb = cpus, memory_mb
        self.pids: dict[int, int] = {}
        self.addresses: dict[int, str] = {}
        (work / "droplets").mkdir(parents=True, exist_ok=True, mode=0o700)
        (work / "images").mkdir(parents=True, exist_ok=True, mode=0o700)

    def image_file(self, image: dict) -> Path:
        return self.stock_image if image["public"] else self.work / "images" / f"{image['id']}.qcow2"

    def droplet_dir(self, droplet: dict) -> Path:
        return self.work / "droplets" / str(droplet["id"])

    def _address(self) -> str:
        taken = set(self.addresses.values())
        for n in range(2, 255):
            address = f"127.0.101.{n}"
            if address not in taken and all(port_free(address, p, port) for p, port in forwards()):
                return address
        raise RuntimeError("simulator: no free loopback address for another droplet")

    def boot(self, droplet: dict, image: dict, metadata: dict) -> str:
        folder = self.droplet_dir(droplet)
        folder.mkdir(mode=0o700)
        address = self._address()
        mac = "02:00:{:02x}:{:02x}:{:02x}:{:02x}".format(*droplet["id"].to_bytes(4, "big"))
        metadata = {
            **metadata,
            "interfaces": {
                "public": [
                    {
                        "ipv4": {"ip_address": GUEST_ADDRESS, "netmask": "255.255.0.0", "gateway": GUEST_HOST},
                        "mac": mac,
                        "type": "public",
                    }
                ]
            },
            "dns": {"nameservers": [GUEST_DNS]},
            "floating_ip": {"ipv4": {"active": False}},
            "reserved_ip": {"ipv4": {"active": False}},
            "_public_ipv4": address,
        }
        write_private(folder / "metadata.json", json.dumps(metadata))
        disk = folder / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.image_file(image)), str(disk)],
            check=True,
        )
        rules = [f"hostfwd={proto}:{address}:{port}-:{port}" for proto, port in forwards()]
        netdev = ",".join(
            [
                "user,id=net0",
                f"net={GUEST_NET}",
                f"host={GUEST_HOST}",
                f"dhcpstart={GUEST_ADDRESS}",
                f"guestfwd=tcp:{METADATA}:80-cmd:python3 {METADATA_SCRIPT} {folder / 'metadata.json'}",
                *rules,
            ]
        )
        argv = [
            QEMU,
            "-name",
            f"outband-sim-droplet-{droplet['id']}",
            "-machine",
            "pc",
            *qemu.accel_args(self.accel, self.cpus),
            "-m",
            str(self.memory_mb),
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-smbios",
            f"type=1,manufacturer=DigitalOcean,product=Droplet,serial={droplet['id']}",
            "-serial",
            f"file:{folder / 'serial.log'}",
            "-qmp",
            f"unix:{folder / 'qmp.sock'},server=on,wait=off",
            "-object",
            "rng-random,filename=/dev/urandom,id=rng0",
            "-device",
            "virtio-rng-pci,rng=rng0",
            "-netdev",
            netdev,
            "-device",
            f"virtio-net-pci,netdev=net0,mac={mac}",
            "-drive",
            # cache=unsafe: the simulator's disks need not survive a crash of this machine, and under
            # emulation a build's many flushes (dpkg, pip) cost minutes.
            f"file={disk},format=qcow2,if=virtio,discard=unmap,cache=unsafe",
        ]
        proc = process.spawn(argv, folder / "qemu.log", folder / "qemu.pid")
        self.pids[droplet["id"]] = proc.pid
        self.addresses[droplet["id"]] = address
        return address

    def running(self, droplet: dict) -> bool:
        pid = self.pids.get(droplet["id"])
        return pid is not None and process.alive(pid, QEMU)

    def _qmp(self, droplet: dict, command: str) -> None:
        sock = self.droplet_dir(droplet) / "qmp.sock"
        if self.running(droplet) and sock.exists():
            with contextlib.suppress(Exception):  # the VM is going away anyway
                qemu.qmp(sock, command)

    def shutdown(self, droplet: dict) -> None:
        """ACPI power button: the guest shuts down cleanly and qemu exits."""
        self._qmp(droplet, "system_powerdown")

    def power_off(self, droplet: dict) -> None:
        self._qmp(droplet, "quit")

    def snapshot(self, droplet: dict, image: dict) -> None:
        """The droplet's disk, flattened and compressed, as the snapshot's image file."""
        dest = self.image_file(image)
        tmp = dest.with_name(f".{dest.name}.tmp")
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
                str(self.droplet_dir(droplet) / "disk.qcow2"),
                str(tmp),
            ],
            check=True,
        )
        tmp.replace(dest)

    def destroy(self, droplet: dict) -> None:
        pid = self.pids.pop(droplet["id"], None)
        if pid is not None:
            process.kill(pid, QEMU)
        self.addresses.pop(droplet["id"], None)
        folder = self.droplet_dir(droplet)
        if folder.exists():
            shred(folder / "metadata.json")
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
            folder.rmdir()

    def remove_image(self, image: dict) -> None:
        if not image["public"]:
            self.image_file(image).unlink(missing_ok=True)

    def serial_log(self, droplet_id: int) -> str:
        try:
            return (self.work / "droplets" / str(droplet_id) / "serial.log").read_text(errors="replace")
        except OSError:
            return ""
