"""The DigitalOcean target: droplet from an Outband snapshot, cloud firewall, DNS — with pydo.

Every resource is written to the state record the moment it exists; a failure at any step removes
what was created and names the step. What DigitalOcean really does, and what this code expects:

- a create that fails with a server error may have happened: before trying again, the resource
  is looked up (by its name or tag), never created twice;
- a droplet can be `active` before it has an address: the launch waits for the address too;
- DNS records are made once the droplet has an address, so the appliance's first boot waits until
  every name resolves to it before asking Let's Encrypt (the contract's `acme.await_dns`);
- a deleted droplet is listed (`archive`) for a while: destroy waits until it is gone, deletes
  whatever still carries the appliance's tag, and can be run again until nothing is left.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from appliance import contract, https, images, log, ssh, userdata
from appliance.cache import Cache
from appliance.config import Settings
from appliance.doapi import DoApi, DoError
from appliance.errors import ExitStatus, OutbandError, die
from appliance.images import Image, Snapshot
from appliance.provisioners import Built, PackerDigitalOcean, Provisioner
from appliance.state import Record, Store
from appliance.targets import LaunchSpec, common
from appliance.targets.common import names, step
from appliance.wait import REAL, Clock, wait_until

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
EVERYWHERE = ["0.0.0.0/0", "::/0"]
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
HEALTH_TIMEOUT = 20 * 60  # includes first boot's wait for DNS (records made after the droplet)
GONE_TIMEOUT = 5 * 60  # a deleted droplet is listed as `archive` for a while


def firewall_rules(operator_cidr: str) -> tuple[list[dict], list[dict]]:
    """SSH from the operator only; the appliance's public ports from anywhere; any egress."""
    p = contract.PORTS
    relay = f"{contract.RELAY_PORTS.start}-{contract.RELAY_PORTS.stop - 1}"
    inbound = [{"protocol": "tcp", "ports": str(p["ssh"]), "sources": {"addresses": [operator_cidr]}}]
    inbound += [
        {"protocol": "tcp", "ports": str(p[k]), "sources": {"addresses": EVERYWHERE}}
        for k in ("http", "https", "federation", "turn", "turns")
    ]
    inbound += [
        {"protocol": "udp", "ports": port, "sources": {"addresses": EVERYWHERE}}
        for port in (str(p["turn"]), relay)  # TURN over TLS is TCP only (no DTLS listener)
    ]
    # ICMP without ports: DigitalOcean's API description requires `ports` in every rule, the live
    # API does not take them for ICMP (the one known difference, ../shared/digitalocean/README.md).
    inbound.append({"protocol": "icmp", "sources": {"addresses": EVERYWHERE}})
    outbound = [
        {"protocol": proto, "ports": "all", "destinations": {"addresses": EVERYWHERE}} for proto in ("tcp", "udp")
    ]
    outbound.append({"protocol": "icmp", "destinations": {"addresses": EVERYWHERE}})
    return inbound, outbound


def record_name(fqdn: str, zone: str) -> str:
    """The record's name inside the zone: '@' for the apex."""
    return "@" if fqdn == zone else fqdn.removesuffix("." + zone)


def public_address(droplet: dict, family: str = "v4") -> str | None:
    return next((n["ip_address"] for n in droplet["networks"].get(family) or [] if n["type"] == "public"), None)


class DigitalOceanTarget:
    name = "digitalocean"

    def __init__(
        self,
        s: Settings,
        api: DoApi | None = None,
        health: Callable[[Record], None] | None = None,
        poll_interval: float = 5.0,
        clock: Clock = REAL,
    ):
        self.s = s
        self.store = Store(s.dirs.state)
        self._api = api
        self.health = health or self.wait_healthy
        self.poll_interval = poll_interval
        self.clock = clock
        self.gone_timeout = GONE_TIMEOUT

    @property
    def token(self) -> str:
        token = os.environ.get("DIGITALOCEAN_TOKEN")
        if not token:
            die(
                "DIGITALOCEAN_TOKEN is not set",
                hint="export a DigitalOcean API token (read/write scopes)",
                status=ExitStatus.USAGE,
            )
        return token

    @property
    def api(self) -> DoApi:
        if self._api is None:
            self._api = DoApi(self.token, self.s.do.api_url, self.s.do.ca_bundle, clock=self.clock)
        return self._api

    # -- images -------------------------------------------------------------------------------------
    def provisioner(
        self, via: str | None, use_layers: bool = True, fresh_base: bool = False, pins: dict[str, str] | None = None
    ) -> Provisioner:
        if via not in (None, "packer"):
            die(
                f"the digitalocean target bakes only through Packer, not --via {via}",
                hint="drop --via",
                status=ExitStatus.USAGE,
            )
        if pins:
            die(
                "--packages-from pins local bakes: DigitalOcean's build starts from its own Debian image",
                hint="bake with --target local",
                status=ExitStatus.USAGE,
            )
        return PackerDigitalOcean(self.s, Cache(self.s.dirs.cache), self.token)

    def publish(self, name: str, built: Built, manifest: dict, bom: dict) -> Image:
        found = [x for x in self.snapshots() if x["name"] == name]
        if not found:
            die(f"Packer finished but no snapshot named {name} is in the account", hint="see the bake's log")
        snap = found[-1]
        ref = Snapshot(name, Path(), Path(), str(snap["id"]), tuple(snap.get("regions") or ()), snap["created_at"])
        return images.publish_snapshot_manifest(self.s, ref, manifest, bom)

    def snapshots(self) -> list[dict]:
        """Outband snapshots in the account, oldest first."""
        found = self.api.paginate(
            "list snapshots", self.api.client.snapshots.list, "snapshots", resource_type="droplet"
        )
        return sorted((x for x in found if x["name"].startswith("outband-")), key=lambda x: x["created_at"])

    def _as_image(self, snap: dict) -> Snapshot:
        folder = images.images_dir(self.s)
        return Snapshot(
            snap["name"],
            folder / f"{snap['name']}.manifest.json",
            folder / f"{snap['name']}.sbom.json",
            str(snap["id"]),
            tuple(snap.get("regions") or ()),
            snap["created_at"],
        )

    def images(self) -> list[Image]:
        return [self._as_image(x) for x in self.snapshots()]

    def prune_images(self, keep: int) -> list[Image]:
        doomed = self.snapshots()[:-keep]
        for snap in doomed:
            self.api.call(
                f"delete snapshot {snap['name']}", self.api.client.snapshots.delete, snap["id"], missing_ok=True
            )
        return [self._as_image(x) for x in doomed]

    def resolve_image(self, ref: str | None) -> Snapshot:
        snaps = self.snapshots()
        if ref:
            match = [x for x in snaps if ref in (str(x["id"]), x["name"])]
            if not match:
                die(
                    f"no Outband snapshot named or numbered {ref!r}",
                    hint="`invoke images --target digitalocean` lists them",
                    status=ExitStatus.USAGE,
                )
            return self._as_image(match[-1])
        if not snaps:
            die(
                "no Outband snapshot in this account",
                hint="run `invoke bake --target digitalocean` first",
                status=ExitStatus.USAGE,
            )
        return self._as_image(snaps[-1])

    # -- launch ---------------------------------------------------------------------------------------
    def default_domain(self, name: str) -> str:
        zone = self.s.do.dns_zone
        if not zone:
            die(
                "no domain given",
                hint="pass --domain D (inside outband.digitalocean.dns_zone)",
                status=ExitStatus.USAGE,
            )
        return f"{name}.{zone}"

    def check(self, spec: LaunchSpec) -> None:
        userdata.validate_name(spec.name)
        userdata.validate_domain(spec.domain)
        if spec.bare:
            die("a bare (SSH-only) boot is a local image test", hint="use the local target", status=ExitStatus.USAGE)
        zone = self.s.do.dns_zone
        if not zone or not (spec.domain == zone or spec.domain.endswith("." + zone)):
            die(
                f"domain {spec.domain} is not inside the DigitalOcean DNS zone {zone or '(unset)'}",
                hint="set outband.digitalocean.dns_zone to a domain managed in DigitalOcean that contains D",
                status=ExitStatus.USAGE,
            )
        try:
            ipaddress.ip_network(self.s.do.operator_cidr)
        except ValueError:
            die(
                f"operator_cidr {self.s.do.operator_cidr!r} is not a network",
                hint="set outband.digitalocean.operator_cidr to your address, e.g. 198.51.100.7/32",
                status=ExitStatus.USAGE,
            )
        self.trust_roots()  # a staging launch without the staging roots fails here, before anything is made
        self.store.ensure_free(spec.name)

    def check_image(self, image: Image) -> Snapshot:
        if not isinstance(image, Snapshot):
            die(f"{image.describe()} is not a DigitalOcean snapshot", hint="pass --image SNAPSHOT")
        if self.s.do.region not in image.regions:
            die(
                f"snapshot {image.name} is not in region {self.s.do.region} (it is in "
                f"{', '.join(image.regions) or 'none'})",
                hint="transfer the snapshot to that region in DigitalOcean, or set outband.digitalocean.region",
                status=ExitStatus.USAGE,
            )
        return image

    def trust_roots(self) -> str:
        """The roots the appliance's certificate chains to, as the operator's checks trust them: the
        system's CAs for Let's Encrypt, the configured file otherwise. Staging's roots are in no
        trust store (Let's Encrypt's docs): a staging launch needs them named."""
        if self.s.acme_roots:
            if not Path(self.s.acme_roots).is_file():
                die(f"acme.roots {self.s.acme_roots} does not exist", hint="point it at a PEM file of CA roots")
            return self.s.acme_roots
        if self.s.acme_staging:
            die(
                "acme.staging needs Let's Encrypt's staging roots, which no trust store holds",
                hint="save https://letsencrypt.org/certs/staging/letsencrypt-stg-root-x1.pem (and -x2) "
                "into one file and set outband.acme.roots to it",
                status=ExitStatus.USAGE,
            )
        return SYSTEM_CAS

    def launch(self, spec: LaunchSpec, keep_on_failure: bool = False) -> Record:
        self.check(spec)
        image = spec.image if isinstance(spec.image, Image) else self.resolve_image(spec.image)
        snapshot = self.check_image(image)
        record = self.store.create(spec.name, self.name)
        with common.undo_on_failure(record, self.destroy, keep=keep_on_failure):
            self._launch(record, spec, snapshot)
        return record

    def _launch(self, record: Record, spec: LaunchSpec, snapshot: Snapshot) -> None:
        tag = f"outband-{spec.name}"
        record.set(tag=tag, domain=spec.domain, names=names(spec.domain), snapshot=snapshot.id)
        api = self.api
        with step(record, "Check the DNS zone for records of these names"):
            self.refuse_existing_records(spec.domain)
        with step(record, "Generate per-launch secrets and keys"):
            identity = common.new_identity(record)
        with step(record, "Upload the operator SSH key"):
            wanted = identity.operator.public_openssh.split()[:2]

            def find_key() -> dict | None:
                keys = api.paginate("list SSH keys", api.client.ssh_keys.list, "ssh_keys")
                return next((k for k in keys if k["public_key"].split()[:2] == wanted), None)

            key = self.create_once(
                "upload SSH key",
                lambda: api.client.ssh_keys.create({"name": tag, "public_key": identity.operator.public_openssh}),
                "ssh_key",
                find_key,
            )
            record.set(ssh_key_id=key["id"], ssh_key_uploaded=True)
        with step(record, "Render the user-data"):
            directory = self.s.acme_directory or (LETS_ENCRYPT_STAGING if self.s.acme_staging else LETS_ENCRYPT)
            contract_ = userdata.contract(
                spec.name,
                spec.domain,
                spec.contact_email,
                directory,
                None,
                identity.secrets,
                await_dns=True,
                federation=spec.federation,
                open_federation=spec.open_federation,
            )
            text = userdata.render(contract_, identity.host_key, identity.operator.public_openssh)
            record.set(federation=contract_["federation"])  # the team, kept for verify and later changes
        with step(record, "Create the droplet"):
            body = {
                "name": spec.name,
                "region": self.s.do.region,
                "size": self.s.do.size,
                "image": int(snapshot.id),
                "ssh_keys": [record.data["ssh_key_id"]],
                "user_data": text,
                "tags": [tag],
                "ipv6": self.s.do.ipv6,
                "monitoring": False,
                "backups": False,
            }

            def find_droplet() -> dict | None:
                mine = api.paginate("list droplets", api.client.droplets.list, "droplets", tag_name=tag)
                return next((d for d in mine if d["name"] == spec.name and d["status"] != "archive"), None)

            droplet = self.create_once(
                "create droplet", lambda: api.client.droplets.create(body), "droplet", find_droplet
            )
            record.set(droplet_id=droplet["id"])
        with step(record, "Wait for the droplet to become active and get its address"):
            droplet = self.wait_active(record.data["droplet_id"])
            record.set(address=public_address(droplet), address_v6=public_address(droplet, "v6") or "")
        with step(record, "Create the cloud firewall"):
            inbound, outbound = firewall_rules(self.s.do.operator_cidr)
            rules = {"name": tag, "tags": [tag], "inbound_rules": inbound, "outbound_rules": outbound}

            def find_firewall() -> dict | None:
                every = api.paginate("list firewalls", api.client.firewalls.list, "firewalls")
                return next((f for f in every if f.get("name") == tag), None)

            firewall = self.create_once(
                "create firewall", lambda: api.client.firewalls.create(rules), "firewall", find_firewall
            )
            record.set(firewall_id=firewall["id"])
        with step(record, "Create the DNS records"):
            self.create_records(record, spec.domain)
        ssh.write_config(record, record.data["address"], contract.PORTS["ssh"], identity.host_key.public_openssh)
        with step(record, "Wait until the appliance is healthy (first boot waits for DNS, then Let's Encrypt)"):
            self.health(record)
        common.write_facts(
            record, self.name, record.data["address"], contract.PORTS["ssh"], identity, self.trust_roots()
        )
        record.status = "running"
        record.data.pop("step", None)
        record.save()

    def create_once(self, what: str, create: Callable[[], dict], key: str, find: Callable[[], dict | None]) -> dict:
        """Create a resource; after an answer that leaves it unknown whether the server made it (a
        5xx, no answer), look it up before trying again — never two of it."""
        for attempt in range(1, 4):
            try:
                return self.api.call(what, create, create=True)[key]
            except DoError as e:
                if not e.uncertain or attempt == 3:
                    raise
                log.detail(f"{what}: {e.message}; looking it up before trying again")
                self.clock.sleep(self.api.backoff * attempt)
                found = find()
                if found is not None:
                    log.detail(f"{what}: it was made after all ({found.get('id')})")
                    return found
        raise AssertionError("unreachable")

    def zone_records(self) -> list[dict]:
        api = self.api
        return api.paginate(
            "list DNS records", api.client.domains.list_records, "domain_records", domain_name=self.s.do.dns_zone
        )

    def refuse_existing_records(self, domain: str) -> None:
        """A stale A record or a CNAME for one of the names would send clients (and Let's Encrypt's
        validation) elsewhere: refuse to launch over them rather than add a second answer."""
        zone = self.s.do.dns_zone
        wanted = {record_name(n, zone) for n in names(domain)}
        clash = [r for r in self.zone_records() if r["name"] in wanted and r["type"] in ("A", "AAAA", "CNAME")]
        if clash:
            listing = ", ".join(f"{r['type']} {r['name']} → {r['data']}" for r in clash)
            die(
                f"the zone {zone} already has records for these names: {listing}",
                hint="delete them in DigitalOcean (or `invoke destroy` the appliance they belong to), "
                "or pick another domain",
                status=ExitStatus.USAGE,
            )

    def create_records(self, record: Record, domain: str) -> None:
        zone, api = self.s.do.dns_zone, self.api
        wanted = [("A", record.data["address"])]
        if self.s.do.ipv6 and record.data.get("address_v6"):
            wanted.append(("AAAA", record.data["address_v6"]))
        created: list[int] = []
        for fqdn in names(domain):
            for kind, value in wanted:
                body = {"type": kind, "name": record_name(fqdn, zone), "data": value, "ttl": 300}

                def find(body: dict = body) -> dict | None:
                    return next(
                        (r for r in self.zone_records() if all(r.get(k) == body[k] for k in ("type", "name", "data"))),
                        None,
                    )

                rec = self.create_once(
                    f"create {kind} {fqdn}",
                    lambda body=body: api.client.domains.create_record(zone, body),
                    "domain_record",
                    find,
                )
                created.append(rec["id"])
                record.set(dns_zone=zone, dns_records=created)

    def wait_active(self, droplet_id: int) -> dict:
        """Until the droplet is active *and* has a public address (it can be active without one)."""

        def ready() -> dict | None:
            droplet = self.api.call("get droplet", self.api.client.droplets.get, droplet_id)["droplet"]
            return droplet if droplet["status"] == "active" and public_address(droplet) else None

        return wait_until(
            ready,
            timeout=self.s.do.active_timeout,
            interval=self.poll_interval,
            what=f"droplet {droplet_id} to be active with a public address",
            hint="raise outband.digitalocean.active_timeout, or try another region",
            clock=self.clock,
        )

    def wait_healthy(self, record: Record) -> None:
        """SSH with the pinned host key, first boot finished (a failure is reported at once, with
        its journal), then Synapse through nginx with a certificate that chains to the trusted
        roots (first boot waits for DNS before it asks for one)."""
        domain, address, roots = record.data["domain"], record.data["address"], self.trust_roots()

        def healthy() -> bool:
            try:
                outcome = common.firstboot_state(record)
            except Exception as e:  # no SSH yet
                log.detail(f"not healthy yet: {e}")
                return False
            if outcome not in (None, "ok"):
                common.first_boot_failed(record, outcome)
            if outcome is None:
                return False
            try:
                port = contract.PORTS["https"]
                return https.request(address, port, f"matrix.{domain}", "/_matrix/client/versions", roots).status == 200
            except Exception as e:  # no TLS, no certificate yet
                log.detail(f"not healthy yet: {e}")
                return False

        wait_until(
            healthy,
            timeout=HEALTH_TIMEOUT,
            interval=self.poll_interval,
            what="the droplet to serve Matrix with a trusted certificate",
            hint=f"ssh -F {record.path('ssh_config')} {ssh.alias(record.name)} journalctl -u outband-firstboot",
            clock=self.clock,
        )

    # -- stop / start ---------------------------------------------------------------------------------
    def _power(self, record: Record, kind: str, wanted: str) -> None:
        droplet_id = record.data.get("droplet_id")
        if not droplet_id or record.status not in ("running", "stopped"):
            die(f"{record.name} has no droplet to {kind}", hint="`invoke ls`", status=ExitStatus.USAGE)
        api = self.api
        api.call(f"{kind} droplet", api.client.droplet_actions.post, droplet_id, {"type": kind}, create=True)

        def reached() -> bool:
            return api.call("get droplet", api.client.droplets.get, droplet_id)["droplet"]["status"] == wanted

        wait_until(
            reached,
            timeout=self.s.do.active_timeout,
            interval=self.poll_interval,
            what=f"the droplet to be {wanted}",
            clock=self.clock,
        )

    def stop(self, record: Record) -> None:
        if self.status(record) != "active":
            die(f"{record.name} is not running", hint=f"`invoke start --name {record.name}`", status=ExitStatus.USAGE)
        with step(record, "Shut the droplet down"):
            self._power(record, "shutdown", "off")
        record.status = "stopped"
        record.data.pop("step", None)
        record.save()

    def start(self, record: Record) -> None:
        if self.status(record) == "active":
            die(f"{record.name} is running already", hint="`invoke verify` checks it", status=ExitStatus.USAGE)
        with step(record, "Power the droplet on"):
            self._power(record, "power_on", "active")
        with step(record, "Wait until the appliance is healthy"):
            self.health(record)
        record.status = "running"
        record.data.pop("step", None)
        record.save()

    # -- destroy / status -------------------------------------------------------------------------------
    def destroy(self, record: Record) -> None:
        """Delete what the record names and whatever else carries the appliance's tag, wait until
        the droplet is really gone, then prove nothing is left. Idempotent: run it again until it
        succeeds; the state is kept until then."""
        ssh.close_master(record)
        data, api = record.data, self.api
        tag = data.get("tag")
        droplets = {data["droplet_id"]} if data.get("droplet_id") else set()
        firewalls = {data["firewall_id"]} if data.get("firewall_id") else set()
        if tag:
            droplets |= {d["id"] for d in self.tagged_droplets(tag)}
            firewalls |= {f["id"] for f in self.tagged_firewalls(tag)}
        for droplet_id in sorted(droplets):
            api.call("delete droplet", api.client.droplets.destroy, droplet_id, missing_ok=True)
        for firewall_id in sorted(firewalls):
            api.call("delete firewall", api.client.firewalls.delete, firewall_id, missing_ok=True)
        for rec in data.get("dns_records", []):
            api.call("delete DNS record", api.client.domains.delete_record, data["dns_zone"], rec, missing_ok=True)
        if data.get("ssh_key_uploaded"):
            api.call("delete SSH key", api.client.ssh_keys.delete, data["ssh_key_id"], missing_ok=True)
        if droplets:
            wait_until(
                lambda: all(self.droplet_gone(d) for d in droplets),
                timeout=self.gone_timeout,
                interval=self.poll_interval,
                what="the deleted droplet to be gone",
                hint=f"run `invoke destroy --name {record.name}` again later",
                clock=self.clock,
            )
        left = self.leftovers(record)
        if left:
            die(
                f"resources of {record.name} are still there: {', '.join(left)}",
                hint=f"run `invoke destroy --name {record.name}` again; the state is kept until nothing is left",
            )
        self.store.remove(record)

    def droplet_gone(self, droplet_id: int) -> bool:
        found = self.api.call("get droplet", self.api.client.droplets.get, droplet_id, missing_ok=True)
        return found is None

    def tagged_droplets(self, tag: str) -> list[dict]:
        api = self.api
        return [
            d
            for d in api.paginate("list droplets", api.client.droplets.list, "droplets", tag_name=tag)
            if d["status"] != "archive"
        ]

    def tagged_firewalls(self, tag: str) -> list[dict]:
        api = self.api
        every = api.paginate("list firewalls", api.client.firewalls.list, "firewalls")
        return [f for f in every if f.get("name") == tag or tag in (f.get("tags") or [])]

    def leftovers(self, record: Record) -> list[str]:
        tag, data = record.data.get("tag"), record.data
        if not tag:
            return []
        left = [f"droplet {d['id']}" for d in self.tagged_droplets(tag)]
        left += [f"firewall {f['id']}" for f in self.tagged_firewalls(tag)]
        if data.get("dns_records"):
            present = {r["id"] for r in self.zone_records()}
            left += [f"DNS record {r}" for r in data["dns_records"] if r in present]
        if data.get("ssh_key_uploaded"):
            keys = self.api.paginate("list SSH keys", self.api.client.ssh_keys.list, "ssh_keys")
            left += [f"SSH key {k['id']}" for k in keys if k["id"] == data["ssh_key_id"]]
        return left

    def status(self, record: Record) -> str:
        if not record.data.get("droplet_id"):
            return record.status
        try:
            droplet = self.api.call(
                "get droplet", self.api.client.droplets.get, record.data["droplet_id"], missing_ok=True
            )
        except OutbandError as e:
            return f"unknown ({e.message})"
        return "gone" if droplet is None else droplet["droplet"]["status"]
