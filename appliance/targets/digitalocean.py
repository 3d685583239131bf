"""The DigitalOcean target: droplet from an Outband snapshot, cloud firewall, DNS — with pydo.

Every resource is written to the state record the moment it exists; a failure at any step removes
what was created and names the step. Destroy deletes by recorded id, then lists by the appliance's
tag and fails loudly if anything is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterator

from appliance import https, log, ssh, userdata
from appliance.config import Settings
from appliance.doapi import DoApi
from appliance.errors import ExitStatus, OutbandError, die
from appliance.state import Record, Store
from appliance.targets import LaunchSpec, common
from appliance.targets.common import names

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
EVERYWHERE = ["0.0.0.0/0", "::/0"]
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
HEALTH_TIMEOUT = 15 * 60


def firewall_rules(operator_cidr: str) -> tuple[list[dict], list[dict]]:
    """22 from the operator only; the appliance's public ports from anywhere; any egress."""
    inbound = [{"protocol": "tcp", "ports": "22", "sources": {"addresses": [operator_cidr]}}]
    inbound += [
        {"protocol": "tcp", "ports": p, "sources": {"addresses": EVERYWHERE}}
        for p in ("80", "443", "8448", "3478", "5349")
    ]
    inbound += [
        {"protocol": "udp", "ports": p, "sources": {"addresses": EVERYWHERE}} for p in ("3478", "5349", "49152-49171")
    ]
    inbound.append({"protocol": "icmp", "sources": {"addresses": EVERYWHERE}})
    outbound = [
        {"protocol": proto, "ports": "all" if proto != "icmp" else "", "destinations": {"addresses": EVERYWHERE}}
        for proto in ("tcp", "udp", "icmp")
    ]
    for rule in outbound:
        if not rule["ports"]:
            del rule["ports"]
    return inbound, outbound


def record_name(fqdn: str, zone: str) -> str:
    """The record's name inside the zone: '@' for the apex."""
    return "@" if fqdn == zone else fqdn.removesuffix("." + zone)


class DigitalOceanTarget:
    def __init__(
        self,
        s: Settings,
        api: DoApi | None = None,
        health: Callable[[Record], None] | None = None,
        poll_interval: float = 5.0,
    ):
        self.s = s
        self.store = Store(s.dirs.state)
        self._api = api
        self.health = health or self.wait_healthy
        self.poll_interval = poll_interval

    @property
    def api(self) -> DoApi:
        if self._api is None:
            token = os.environ.get("DIGITALOCEAN_TOKEN")
            if not token:
                die(
                    "DIGITALOCEAN_TOKEN is not set",
                    hint="export a DigitalOcean API token (read/write scopes)",
                    status=ExitStatus.USAGE,
                )
            self._api = DoApi(token, self.s.do.api_url, self.s.do.ca_bundle)
        return self._api

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshots(self) -> list[dict]:
        """Outband snapshots in the account, oldest first."""
        found = self.api.paginate(
            "list snapshots", self.api.client.snapshots.list, "snapshots", resource_type="droplet"
        )
        return sorted((x for x in found if x["name"].startswith("outband-")), key=lambda x: x["created_at"])

    def prune_snapshots(self, keep: int) -> list[dict]:
        if keep < 1:
            die("--prune must keep at least one snapshot", hint="pass --prune 1 or more", status=ExitStatus.USAGE)
        doomed = self.snapshots()[:-keep]
        for snap in doomed:
            self.api.call(
                f"delete snapshot {snap['name']}", self.api.client.snapshots.delete, snap["id"], missing_ok=True
            )
        return doomed

    def resolve_snapshot(self, image: str | None) -> dict:
        snaps = self.snapshots()
        if image:
            match = [x for x in snaps if image in (str(x["id"]), x["name"])]
            if not match:
                die(
                    f"no Outband snapshot named or numbered {image!r}",
                    hint="`invoke images` lists them",
                    status=ExitStatus.USAGE,
                )
            return match[-1]
        if not snaps:
            die(
                "no Outband snapshot in this account",
                hint="run `invoke bake --target digitalocean` first",
                status=ExitStatus.USAGE,
            )
        return snaps[-1]

    # -- launch ---------------------------------------------------------------------------------------
    def check(self, spec: LaunchSpec) -> None:
        userdata.validate_name(spec.name)
        userdata.validate_domain(spec.domain)
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
        self.store.ensure_free(spec.name)

    def launch(self, spec: LaunchSpec, keep_on_failure: bool = False) -> Record:
        self.check(spec)
        snapshot = self.resolve_snapshot(str(spec.image) if spec.image else None)
        record = self.store.create(spec.name, "digitalocean")
        with common.undo_on_failure(record, self.destroy, keep=keep_on_failure):
            self._launch(record, spec, snapshot)
        return record

    @contextlib.contextmanager
    def _step(self, record: Record, title: str) -> Iterator[None]:
        record.set(step=title)
        with log.step(title):
            try:
                yield
            except OutbandError as e:
                e.message = f"{title}: {e.message}"
                raise

    def _launch(self, record: Record, spec: LaunchSpec, snapshot: dict) -> None:
        tag = f"outband-{spec.name}"
        record.set(tag=tag, domain=spec.domain, names=names(spec.domain), snapshot=snapshot["id"])
        api = self.api
        with self._step(record, "Generate per-launch secrets and keys"):
            identity = common.new_identity(record)
        with self._step(record, "Upload the operator SSH key"):
            wanted = identity.operator.public_openssh.split()[:2]
            keys = api.paginate("list SSH keys", api.client.ssh_keys.list, "ssh_keys")
            existing = next((k for k in keys if k["public_key"].split()[:2] == wanted), None)
            if existing:
                record.set(ssh_key_id=existing["id"], ssh_key_uploaded=False)
            else:
                key = api.call(
                    "upload SSH key",
                    api.client.ssh_keys.create,
                    {"name": tag, "public_key": identity.operator.public_openssh},
                )["ssh_key"]
                record.set(ssh_key_id=key["id"], ssh_key_uploaded=True)
        with self._step(record, "Render the user-data"):
            directory = self.s.acme_directory or (LETS_ENCRYPT_STAGING if self.s.acme_staging else LETS_ENCRYPT)
            contract = userdata.contract(spec.name, spec.domain, spec.contact_email, directory, None, identity.secrets)
            text = userdata.render(contract, identity.host_key, identity.operator.public_openssh)
        with self._step(record, "Create the droplet"):
            body = {
                "name": spec.name,
                "region": self.s.do.region,
                "size": self.s.do.size,
                "image": int(snapshot["id"]),
                "ssh_keys": [record.data["ssh_key_id"]],
                "user_data": text,
                "tags": [tag],
                "ipv6": self.s.do.ipv6,
                "monitoring": False,
                "backups": False,
            }
            droplet = api.call("create droplet", api.client.droplets.create, body)["droplet"]
            record.set(droplet_id=droplet["id"])
        with self._step(record, "Wait for the droplet to become active"):
            droplet = self.wait_active(record.data["droplet_id"])
            v4 = [n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public"]
            v6 = [n["ip_address"] for n in droplet["networks"].get("v6", []) if n["type"] == "public"]
            record.set(address=v4[0], address_v6=v6[0] if v6 else "")
        with self._step(record, "Create the cloud firewall"):
            inbound, outbound = firewall_rules(self.s.do.operator_cidr)
            firewall = api.call(
                "create firewall",
                api.client.firewalls.create,
                {"name": tag, "tags": [tag], "inbound_rules": inbound, "outbound_rules": outbound},
            )["firewall"]
            record.set(firewall_id=firewall["id"])
        with self._step(record, "Create the DNS records"):
            zone = self.s.do.dns_zone
            created: list[int] = []
            wanted_records = [("A", record.data["address"])]
            if self.s.do.ipv6 and record.data["address_v6"]:
                wanted_records.append(("AAAA", record.data["address_v6"]))
            for fqdn in names(spec.domain):
                for kind, value in wanted_records:
                    rec = api.call(
                        f"create {kind} {fqdn}",
                        api.client.domains.create_record,
                        zone,
                        {"type": kind, "name": record_name(fqdn, zone), "data": value, "ttl": 300},
                    )
                    created.append(rec["domain_record"]["id"])
                    record.set(dns_zone=zone, dns_records=created)
        ssh.write_config(record, record.data["address"], 22, identity.host_key.public_openssh)
        with self._step(record, "Wait until the appliance is healthy"):
            self.health(record)
        common.write_facts(record, "digitalocean", record.data["address"], 22, identity, SYSTEM_CAS)
        record.status = "running"
        record.save()

    def wait_active(self, droplet_id: int) -> dict:
        deadline = time.monotonic() + self.s.do.active_timeout
        while True:
            droplet = self.api.call("get droplet", self.api.client.droplets.get, droplet_id)["droplet"]
            if droplet["status"] == "active":
                return droplet
            if time.monotonic() > deadline:
                die(
                    f"droplet {droplet_id} was still {droplet['status']!r} after {self.s.do.active_timeout:.0f}s",
                    hint="raise outband.digitalocean.active_timeout, or try another region",
                )
            time.sleep(self.poll_interval)

    def wait_healthy(self, record: Record) -> None:
        """SSH with the pinned host key, then Synapse through nginx with a publicly trusted certificate."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        domain, address = record.data["domain"], record.data["address"]
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if ssh.command(record, "true", timeout=20).returncode == 0:
                    r = https.request(address, 443, f"matrix.{domain}", "/_matrix/client/versions", SYSTEM_CAS)
                    if r.status == 200:
                        return
            time.sleep(self.poll_interval)
        die(
            "the droplet did not become healthy",
            hint="ssh in with the state dir's ssh_config and check "
            "`journalctl -u outband-firstboot`; Let's Encrypt needs the DNS records to resolve",
        )

    # -- destroy / status -------------------------------------------------------------------------------
    def destroy(self, record: Record) -> None:
        """Delete by recorded id (404s are fine: idempotent), then prove nothing tagged is left."""
        ssh.close_master(record)
        data, api = record.data, self.api
        if data.get("droplet_id"):
            api.call("delete droplet", api.client.droplets.destroy, data["droplet_id"], missing_ok=True)
        if data.get("firewall_id"):
            api.call("delete firewall", api.client.firewalls.delete, data["firewall_id"], missing_ok=True)
        for rec in data.get("dns_records", []):
            api.call("delete DNS record", api.client.domains.delete_record, data["dns_zone"], rec, missing_ok=True)
        if data.get("ssh_key_uploaded"):
            api.call("delete SSH key", api.client.ssh_keys.delete, data["ssh_key_id"], missing_ok=True)
        left = self.leftovers(record)
        if left:
            die(
                f"resources of {record.name} are still there: {', '.join(left)}",
                hint=f"run `invoke destroy {record.name}` again; the state is kept until nothing is left",
            )
        self.store.remove(record)

    def leftovers(self, record: Record) -> list[str]:
        tag, data, api = record.data.get("tag"), record.data, self.api
        if not tag:
            return []
        left = [
            f"droplet {d['id']}"
            for d in api.paginate("list droplets", api.client.droplets.list, "droplets", tag_name=tag)
        ]
        left += [
            f"firewall {f['id']}"
            for f in api.paginate("list firewalls", api.client.firewalls.list, "firewalls")
            if f.get("name") == tag or tag in f.get("tags", [])
        ]
        if data.get("dns_records"):
            present = {
                r["id"]
                for r in api.paginate(
                    "list DNS records", api.client.domains.list_records, "domain_records", domain_name=data["dns_zone"]
                )
            }
            left += [f"DNS record {r}" for r in data["dns_records"] if r in present]
        if data.get("ssh_key_uploaded"):
            keys = api.paginate("list SSH keys", api.client.ssh_keys.list, "ssh_keys")
            left += [f"SSH key {k['id']}" for k in keys if k["id"] == data["ssh_key_id"]]
        return left

    def status(self, record: Record) -> str:
        if not record.data.get("droplet_id"):
            return record.status
        droplet = self.api.call("get droplet", self.api.client.droplets.get, record.data["droplet_id"], missing_ok=True)
        return "gone" if droplet is None else droplet["droplet"]["status"]
