"""The local target: a qcow2 overlay of the baked image under qemu, one loopback address per appliance.

Each appliance gets 127.0.100.N with its service ports forwarded (80, 443, 8448, TURN, the relay
range; SSH on 2222), so several run side by side on the standard ports. TLS comes from the local
pebble through certbot on the appliance: the production path with another directory URL.
"""

from __future__ import annotations

import contextlib
import os
import secrets as pysecrets
import shutil
import subprocess
from pathlib import Path

from appliance import contract, https, images, localnet, log, pebble, qemu, ssh, userdata
from appliance.cache import Cache
from appliance.config import Settings
from appliance.errors import ExitStatus, die
from appliance.images import DiskImage, Image
from appliance.net import port_free
from appliance.provisioners import Built, Chroot, PackerQemu, Provisioner
from appliance.state import Record, Store, shred, write_private
from appliance.targets import LaunchSpec, common
from appliance.targets.common import names
from appliance.wait import REAL, Clock

SSH_PORT = 2222  # on the appliance's own loopback address; 22 stays free for the host's sshd
BOOT_TIMEOUT = 20 * 60  # under TCG a first boot takes minutes; a stuck one is reported, not waited on forever
# The serial log is a local file: reading it often costs the guest nothing and takes up to a poll's
# length off every launch.
POLL_SECONDS = 0.25
# An SSH probe is a process here and a connection the guest refuses until sshd is up: not that often.
SSH_PROBE_SECONDS = 1
# A launch's SSH waits for first boot's report on the console: a handshake (sshd-session, key
# exchange, the session) costs the emulated guest ~0.5 s of CPU each, and its vCPUs are busy until
# first boot is done. Only a console silent this long gets SSH earlier, to ask first boot's unit.
QUIET_CONSOLE_SECONDS = 120
STOP_TIMEOUT = 90  # a clean shutdown under emulation (PostgreSQL and Synapse flush first)
SLOW_CHECK_SECONDS = 20  # SSH checks on a first boot that has not reported on the console yet
# What first boot (images/files/usr/local/lib/outband/firstboot.py) writes to the serial console.
FIRSTBOOT_DONE = contract.CONSOLE_DONE
FIRSTBOOT_FAILED = contract.CONSOLE_FAILED


def firstboot_outcome(serial_log: Path) -> str | None:
    """ "ok", why first boot failed, or None while it has not finished (or the log is not there yet)."""
    try:
        text = serial_log.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if FIRSTBOOT_FAILED in line:
            return line.split(FIRSTBOOT_FAILED, 1)[1].strip()
        if FIRSTBOOT_DONE in line:
            return "ok"
    return None


def forwards() -> list[qemu.Forward]:
    ports = contract.PORTS
    tcp = [qemu.Forward("tcp", ports[k], ports[k]) for k in ("http", "https", "federation", "turn", "turns")]
    udp = [qemu.Forward("udp", p, p) for p in (ports["turn"], *contract.RELAY_PORTS)]  # no DTLS on turns
    return [qemu.Forward("tcp", SSH_PORT, ports["ssh"]), *tcp, *udp]


BASE = "base.qcow2"
KERNEL = "vmlinuz"


def own_base(image: DiskImage, record: Record) -> None:
    """The appliance's disk is layered on its own link to the image (and boots its own link to the
    kernel), in its state directory: a later bake or a prune of build/ can never take the file
    from under it. A hard link costs nothing; across file systems it is a copy (~350 MB, seconds)."""
    for source, name in ((image.path, BASE), (image.kernel, KERNEL)):
        if not source.is_file():
            continue
        target = record.path(name)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        target.chmod(0o600)


class LocalTarget:
    name = "local"

    def __init__(self, s: Settings, clock: Clock = REAL):
        self.s = s
        self.store = Store(s.dirs.state)
        self.clock = clock

    # -- images --------------------------------------------------------------------------------
    def provisioner(
        self, via: str | None, use_layers: bool = True, fresh_base: bool = False, pins: dict[str, str] | None = None
    ) -> Provisioner:
        cache = Cache(self.s.dirs.cache)
        if via in (None, "chroot"):
            return Chroot(self.s, cache, use_layers=use_layers, fresh_base=fresh_base, pins=pins)
        if via == "packer":
            if pins:
                die("--packages-from bakes through the chroot", hint="drop --via packer", status=ExitStatus.USAGE)
            return PackerQemu(self.s, cache)
        die(f"--via must be chroot or packer, not {via!r}", hint="chroot is the fast default", status=ExitStatus.USAGE)

    def publish(self, name: str, built: Built, manifest: dict, bom: dict) -> Image:
        assert built.qcow2 is not None and built.kernel is not None
        return images.publish_disk(self.s, name, built.qcow2, built.kernel, manifest, bom, built.content)

    def resolve_image(self, ref: str | None) -> DiskImage:
        if ref:
            path = Path(ref).expanduser()
            if not path.is_file():
                die(
                    f"image {ref} does not exist",
                    hint="run `invoke bake` or pass --image PATH",
                    status=ExitStatus.USAGE,
                )
            return images.disk_image(path.resolve())
        latest = images.latest_disk(self.s)
        if latest is None:
            die(
                "no baked image on this machine",
                hint="run `invoke bake` first, or pass --image PATH",
                status=ExitStatus.USAGE,
            )
        return latest

    def images(self) -> list[Image]:
        return list(images.local_disks(self.s))

    def in_use(self) -> set[str]:
        return {r.data.get("image_name", "") for r in self.store.all() if r.target == self.name}

    def prune_images(self, keep: int) -> list[Image]:
        """Remove all but the newest `keep` images; an image some appliance was launched from stays
        listed until that appliance is gone (the appliance itself runs from its own link)."""
        used = self.in_use()
        doomed = [i for i in images.local_disks(self.s)[:-keep] if i.name not in used]
        for image in doomed:
            images.remove_disk(image)
        return list(doomed)

    # -- launch --------------------------------------------------------------------------------
    def default_domain(self, name: str) -> str:
        return f"{name}.outband.test"

    def allocate_address(self) -> str:
        """The first 127.0.100.N that no appliance of this state uses and whose ports are all free
        (another state directory, or anything else, may hold some)."""
        used = {r.data.get("address") for r in self.store.all()}
        for n in range(1, 255):
            address = f"127.0.100.{n}"
            if address not in used and all(port_free(address, f.proto, f.host_port) for f in forwards()):
                return address
        die("no free loopback address for another appliance", hint="destroy one first", status=ExitStatus.USAGE)

    def launch(self, spec: LaunchSpec, keep_on_failure: bool = False) -> Record:
        userdata.validate_name(spec.name)
        userdata.validate_domain(spec.domain)
        image = spec.image if isinstance(spec.image, Image) else self.resolve_image(spec.image)
        if not isinstance(image, DiskImage) or not image.path.is_file():
            die(
                f"image {image.describe()} is not a local disk image", hint="pass --image PATH", status=ExitStatus.USAGE
            )
        self.store.ensure_free(spec.name)
        address = self.allocate_address()
        accel = qemu.choose_accel(self.s.vm.accel, image.kernel, self.s.dirs.cache)
        record = self.store.create(spec.name, self.name)
        with common.undo_on_failure(record, self.destroy, keep=keep_on_failure):
            self._launch(record, spec, image, address, accel)
        return record

    def _launch(self, record: Record, spec: LaunchSpec, image: DiskImage, address: str, accel: str) -> None:
        record.set(
            address=address,
            domain=spec.domain,
            image=str(image.path),
            image_name=image.name,
            accel=accel,
            names=names(spec.domain),
        )
        with common.step(record, "Generate per-launch secrets and keys"):
            identity = common.new_identity(record)
            launch_secrets, host_key, operator = identity.secrets, identity.host_key, identity.operator
            ssh.write_config(record, address, SSH_PORT, host_key.public_openssh)
        if spec.bare:
            text = userdata.render_bare(spec.name, host_key, operator.public_openssh)
        else:
            with common.step(record, "Local ACME CA (pebble) and DNS names"):
                ca = pebble.ensure(self.s.dirs.state)
                record.set(dns_registered=True)
                pebble.add_names(self.s.dirs.state, names(spec.domain), address)
                root = ca.root_pem()
                write_private(record.path("acme-root.pem"), root)
            with common.step(record, "The appliances' own network and its DNS names"):
                segment = localnet.ensure(self.s.dirs.state)
                record.set(segment=True)
                localnet.add_names(self.s.dirs.state, names(spec.domain), localnet.address(address))
            contract_ = userdata.contract(
                spec.name,
                spec.domain,
                spec.contact_email,
                ca.directory_for_guest,
                ca.api_ca_pem,
                launch_secrets,
                public_ip=address,
                private_ip="10.0.2.15",
                federation=spec.federation,
                open_federation=spec.open_federation,
                # The other appliances' certificates come from the same local ACME CA.
                federation_ca_pem=root,
                appliance_network=localnet.contract_part(address, segment, list(spec.federation)),
            )
            text = userdata.render(contract_, host_key, operator.public_openssh)
            record.set(federation=contract_["federation"])  # the team, kept for verify and later changes
        with common.step(record, "User-data and NoCloud seed"):
            instance_id = f"{spec.name}-{pysecrets.token_hex(4)}"
            userdata.write_seed(record.path("seed.iso"), text, userdata.meta_data(spec.name, instance_id))
        with common.step(record, f"Start the VM on {address} ({accel})"):
            own_base(image, record)
            qemu.overlay(record.path(BASE), record.path("disk.qcow2"))
            vm = self.vm_spec(record, address, accel, seed=True, contract=not spec.bare, segment=not spec.bare)
            pid = qemu.start(vm, record.path("qemu.log"))
            record.set(pid=pid)
        title = "Boot" + ("" if spec.bare else " and first-boot configuration (SSH, certificate, Synapse)")
        with common.step(record, title):
            self.wait_healthy(record, pid, ssh_only=spec.bare)
        with common.step(record, "Remove the seed (user-data) from the VM and the disk"):
            qemu.eject_seed(record.path("qmp.sock"))
            shred(record.path("seed.iso"))
        common.write_facts(record, self.name, address, SSH_PORT, identity, str(record.path("acme-root.pem")))
        record.status = "running"
        record.data.pop("step", None)
        record.save()

    def vm_spec(
        self, record: Record, address: str, accel: str, seed: bool, contract: bool = False, segment: bool = False
    ) -> qemu.VmSpec:
        mcast = localnet.ensure(self.s.dirs.state).mcast if segment else None
        return qemu.VmSpec(
            name=record.name,
            disk=record.path("disk.qcow2"),
            seed=record.path("seed.iso") if seed else None,
            address=address,
            forwards=forwards(),
            accel=accel,
            cpus=self.s.vm.cpus,
            memory_mb=self.s.vm.memory_mb,
            qmp=record.path("qmp.sock"),
            serial_log=record.path("serial.log"),
            pidfile=record.path("qemu.pid"),
            kernel=self.kernel(record),
            contract=contract,
            segment=(mcast, localnet.mac(address)) if mcast else None,
        )

    @staticmethod
    def kernel(record: Record) -> Path | None:
        """The image's exported kernel (the appliance's own link to it) for a direct boot; an image
        without one boots through GRUB."""
        kernel = record.path(KERNEL)
        if kernel.is_file():
            return kernel
        log.warn(f"no kernel was exported with {record.data.get('image')}: booting through firmware and GRUB (slower)")
        return None

    def wait_healthy(self, record: Record, pid: int, ssh_only: bool = False, configured: bool = False) -> None:
        """SSH with the pinned key, then first boot's outcome, then Synapse through nginx with a
        certificate from the ACME CA.

        First boot writes its outcome to the serial console, which qemu logs on this side: reading
        it costs the emulated guest nothing, unlike SSH polls (each one a session, a shell and a
        systemctl on a CPU that is busy booting). SSH proves the pinned host key once first boot has
        reported (a bare boot has no first boot: at once) and, rarely, checks on a first boot that
        has said nothing for QUIET_CONSOLE_SECONDS (it did not run, or it hangs).
        """
        address, domain = record.data["address"], record.data["domain"]
        now, sleep = self.clock.now, self.clock.sleep
        start = now()
        deadline = start + BOOT_TIMEOUT
        # A configured appliance (started again) has no first boot: its outcome is known.
        ssh_ok, outcome, last_check, next_ssh_probe = False, "ok" if configured else None, start, 0.0
        while now() < deadline:
            if not qemu.alive(pid):
                die("the VM stopped during boot", hint=f"see {record.path('serial.log')} and {record.path('qemu.log')}")
            if not ssh_only:
                outcome = outcome or firstboot_outcome(record.path("serial.log"))
            if outcome is None and ssh_ok and now() - last_check >= SLOW_CHECK_SECONDS:
                last_check = now()
                outcome = self.check_firstboot(record)
            if outcome is not None and outcome != "ok":
                self.first_boot_failed(record, outcome)
            ssh_due = ssh_only or outcome is not None or now() - start >= QUIET_CONSOLE_SECONDS
            if ssh_due and not ssh_ok and now() >= next_ssh_probe:
                next_ssh_probe = now() + SSH_PROBE_SECONDS
                ssh_ok = self.probe_ssh(record)
                if ssh_ok and ssh_only:
                    return
            if ssh_only:
                sleep(2)
                continue
            if outcome == "ok" and ssh_ok and self.serves_matrix(address, domain, record):
                return
            sleep(POLL_SECONDS)
        die(
            f"the appliance was not healthy after {BOOT_TIMEOUT // 60} minutes", hint=f"see {record.path('serial.log')}"
        )

    @staticmethod
    def probe_ssh(record: Record) -> bool:
        try:
            probe = ssh.command(record, "true", timeout=20)
        except subprocess.TimeoutExpired:
            return False
        if probe.returncode == 0:
            log.detail("SSH answers with the pinned host key")
            return True
        if any(fatal in probe.stderr for fatal in ssh.FATAL_ERRORS):
            # Not a VM still booting: waiting would not help (and a changed host key is an alarm).
            die(
                f"ssh to the appliance failed: {probe.stderr.strip().splitlines()[-1]}",
                hint=f"see {record.path('ssh_config')}",
            )
        return False

    check_firstboot = staticmethod(common.firstboot_state)
    first_boot_failed = staticmethod(common.first_boot_failed)

    @staticmethod
    def serves_matrix(address: str, domain: str, record: Record) -> bool:
        with contextlib.suppress(Exception):
            r = https.request(
                address,
                contract.PORTS["https"],
                f"matrix.{domain}",
                "/_matrix/client/versions",
                str(record.path("acme-root.pem")),
                timeout=5,
            )
            return r.status == 200 and "versions" in r.json()
        return False

    # -- stop / start (a host restart) ---------------------------------------------------------------
    def running_pid(self, record: Record) -> int | None:
        pid = record.data.get("pid")
        return int(pid) if pid and qemu.alive(int(pid)) else None

    def stop(self, record: Record) -> None:
        """A clean shutdown (the ACPI power button, then a bounded wait, then off); the disk, the
        address, the keys and the secrets stay, for `start`."""
        pid = self.running_pid(record)
        if pid is None:
            die(
                f"{record.name} is not running",
                hint=f"`invoke start --name {record.name}` boots it",
                status=ExitStatus.USAGE,
            )
        with common.step(record, "Shut the appliance down (ACPI power button)"):
            ssh.close_master(record)
            clean = qemu.shutdown(pid, record.path("qmp.sock"), timeout=STOP_TIMEOUT, clock=self.clock)
            if not clean:
                log.warn(f"{record.name} did not power off within {STOP_TIMEOUT} s: it was stopped hard")
        record.data.pop("pid", None)
        record.data.pop("step", None)
        record.status = "stopped"
        record.save()

    def start(self, record: Record) -> None:
        """Boot a stopped appliance again from its own disk: same address, ports, pinned host key and
        secrets, no new launch contract (its first boot is done); returns when it serves Matrix."""
        if self.running_pid(record) is not None:
            die(f"{record.name} is running already", hint="`invoke verify` checks it", status=ExitStatus.USAGE)
        if record.status not in ("running", "stopped"):
            die(f"{record.name} was never launched completely", hint=f"`invoke destroy --name {record.name}`")
        disk, base = record.path("disk.qcow2"), record.path(BASE)
        if not disk.is_file() or not base.is_file():
            die(
                f"the disk of {record.name} is missing ({disk if not disk.is_file() else base})",
                hint=f"nothing can bring it back: `invoke destroy --name {record.name}`",
                status=ExitStatus.USAGE,
            )
        qemu.check_disk(disk)
        address = record.data["address"]
        taken = [f"{f.proto}/{f.host_port}" for f in forwards() if not port_free(address, f.proto, f.host_port)]
        if taken:
            die(
                f"ports of {record.name} on {address} are taken: {', '.join(taken[:4])}",
                hint="stop what listens there first",
                status=ExitStatus.USAGE,
            )
        accel = qemu.choose_accel(self.s.vm.accel, record.path(KERNEL), self.s.dirs.cache)
        with common.step(record, "Local ACME CA (pebble) and DNS names"):
            # After a host restart the local DNS is empty again (it holds its names in memory).
            pebble.ensure(self.s.dirs.state)
            pebble.add_names(self.s.dirs.state, names(record.data["domain"]), address)
            if record.data.get("segment"):
                self.register_segment_names()
        with common.step(record, f"Start the VM on {address} ({accel})"):
            vm = self.vm_spec(record, address, accel, seed=False, segment=bool(record.data.get("segment")))
            pid = qemu.start(vm, record.path("qemu.log"))
            record.set(pid=pid, accel=accel)
        with common.step(record, "Boot (the appliance is configured: its services start by themselves)"):
            self.wait_healthy(record, pid, configured=True)
        record.status = "running"
        record.data.pop("step", None)
        record.save()

    # -- destroy / status ---------------------------------------------------------------------------
    def destroy(self, record: Record) -> None:
        """Idempotent, and safe after a half-done launch: removes exactly what the record says exists."""
        ssh.close_master(record)
        pid = record.data.get("pid")
        if pid:
            qemu.stop(int(pid), record.path("qmp.sock"))
        if record.data.get("dns_registered"):
            pebble.remove_names(self.s.dirs.state, record.data.get("names", []))
        if record.data.get("segment"):
            localnet.remove_names(self.s.dirs.state, record.data.get("names", []))
        self.store.remove(record)
        # The local ACME CA serves every local appliance; it goes with the last one that used it.
        if not any(r.target == self.name and r.data.get("dns_registered") for r in self.store.all()):
            pebble.stop(self.s.dirs.state)
        if not any(r.target == self.name and r.data.get("segment") for r in self.store.all()):
            localnet.stop(self.s.dirs.state)

    def register_segment_names(self) -> None:
        """Every local appliance's names on their network (after a host restart its DNS is empty:
        it holds them in memory); the ones still running need them to reach the one starting."""
        localnet.ensure(self.s.dirs.state)
        for r in self.store.all():
            if r.target == self.name and r.data.get("segment") and r.data.get("address"):
                localnet.add_names(self.s.dirs.state, r.data.get("names", []), localnet.address(r.data["address"]))

    def status(self, record: Record) -> str:
        pid = record.data.get("pid")
        if record.status == "creating":
            return "creating" if pid and qemu.alive(int(pid)) else "broken (half-made)"
        return "running" if pid and qemu.alive(int(pid)) else "stopped"
