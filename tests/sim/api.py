"""SIMULATOR of DigitalOcean's v2 API — a test double at the one boundary this project cannot reach.

It stands in for api.digitalocean.com the way DigitalOcean behaves, not the way a client hopes:
- a new droplet is `new`, then `active` *before* its `networks.v4` is filled (DigitalOcean's
  Terraform provider has a test for exactly this race), and is `off` after a shutdown;
- a deleted droplet is listed with status `archive` for a while, then answers 404;
- a new cloud firewall is `waiting` before it is `succeeded`;
- domain records are in the API at once, but in DNS (pebble-challtestsrv, through SimulatedDns)
  only after a propagation delay; until then the names are NXDOMAIN;
- every request must be one DigitalOcean's own API description allows
  (../shared/digitalocean/openapi.json, validated with openapi-core): anything else is answered
  422 and recorded in `invalid`, which tests require to stay empty;
- failures can be injected: a 429 that carries `ratelimit-reset` but no `Retry-After` (the hourly
  limit), a 5xx returned *after* the create has happened, a droplet that never becomes active,
  a delete that is accepted but never happens.

With a `machines` backend (tests/sim/droplets.py) a droplet is a real qemu VM booted from the
image or snapshot it names, with DigitalOcean's metadata service; without one (unit tests) it goes
through the same states without booting. Nothing of Outband's own code is simulated.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import itertools
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import trustme

from tests.conftest import REPO

TOKEN = "simulated-do-token-for-tests"
# DigitalOcean's public API description (Apache 2.0, digitalocean/openapi at 7c1300c4, bundled;
# licence beside it), kept here compressed so that a clone tests without anything beside it;
# tests/unit/test_digitalocean.py checks it is the workplace's copy (../shared) where that exists.
OPENAPI = Path(__file__).resolve().parent / "digitalocean-openapi.json.gz"
SHARED_OPENAPI = REPO.parent / "shared/digitalocean/openapi.json"
STOCK_SLUG = "debian-13-x64"
REGIONS = ("fra1", "ams3", "nyc3")


@functools.cache
def openapi() -> Any:
    """DigitalOcean's API description, loaded once per process (~3 s). openapi-core's own check of
    the document fails on one unrelated schema, so that check is off (see the file's README).

    One adjustment, listed here: parameters that reuse a response schema marked `readOnly` (the
    SSH key's id and fingerprint, as `{ssh_key_identifier}` in a path) get a copy without the mark.
    OpenAPI defines readOnly for properties of bodies only; openapi-core also applies it to
    parameters, which would refuse every `DELETE /v2/account/keys/{id}`."""
    from openapi_core import Config, OpenAPI

    document = json.loads(gzip.decompress(OPENAPI.read_bytes()))
    schemas = document["components"]["schemas"]

    def writable(schema: Any) -> Any:
        if isinstance(schema, dict):
            if "$ref" in schema and schema["$ref"].startswith("#/components/schemas/"):
                target = schemas.get(schema["$ref"].rsplit("/", 1)[1], {})
                if target.get("readOnly"):
                    return {k: v for k, v in target.items() if k != "readOnly"}
            return {k: writable(v) for k, v in schema.items()}
        if isinstance(schema, list):
            return [writable(v) for v in schema]
        return schema

    for parameter in document["components"].get("parameters", {}).values():
        if "schema" in parameter:
            parameter["schema"] = writable(parameter["schema"])
    return OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))


def spec_problems(method: str, path: str, query: dict[str, list[str]], body: Any) -> list[str]:
    """Why DigitalOcean's API description rejects this request ([] when it allows it).

    The one listed exception: the description requires `ports` in every firewall rule, where the
    live API accepts ICMP rules without it (../shared/digitalocean/README.md)."""
    from openapi_core.testing import MockRequest

    request = MockRequest(
        "https://api.digitalocean.com",
        method.lower(),
        path,
        args={k: v[-1] for k, v in query.items()},
        data=None if body is None else json.dumps(body),
        content_type="application/json" if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        openapi().validate_request(request)
    except Exception as e:
        causes = [str(c) for c in getattr(getattr(e, "__cause__", None), "schema_errors", ())] or [str(e)]
        if path == "/v2/firewalls" and _only_icmp_ports_quirk(body, causes):
            return []
        return causes
    return []


def _only_icmp_ports_quirk(body: Any, causes: list[str]) -> bool:
    rules = (body or {}).get("inbound_rules", []) + (body or {}).get("outbound_rules", [])
    icmp_without_ports = any(r.get("protocol") == "icmp" and "ports" not in r for r in rules)
    return icmp_without_ports and all("'ports' is a required property" in c for c in causes)


class Machines(Protocol):
    """What the simulator needs from a VM backend (tests/sim/droplets.py)."""

    def boot(self, droplet: dict, image: dict, metadata: dict) -> str: ...  # returns the public address

    def shutdown(self, droplet: dict) -> None: ...

    def power_off(self, droplet: dict) -> None: ...

    def running(self, droplet: dict) -> bool: ...

    def snapshot(self, droplet: dict, image: dict) -> None: ...  # blocks until the image file exists

    def destroy(self, droplet: dict) -> None: ...

    def remove_image(self, image: dict) -> None: ...


@dataclass
class Timing:
    """Delays the real service has, in seconds (scaled down for unit tests)."""

    active_after: float = 1.0  # new → active
    networks_after: float = 2.0  # active → networks.v4 filled
    archive_for: float = 3.0  # DELETE → `archive` → 404
    firewall_waiting_for: float = 2.0  # waiting → succeeded
    dns_propagation: float = 5.0  # record created → answered by DNS
    action_takes: float = 0.5  # power_off and similar


@dataclass
class Failure:
    method: str
    path: str  # regex on the path
    status: int
    times: int = 1
    after: bool = False  # the request takes effect, then the answer is this error
    ratelimit_reset_in: float | None = None  # 429 of the hourly limit: ratelimit-reset, no Retry-After


@dataclass
class State:
    keys: dict[int, dict] = field(default_factory=dict)
    droplets: dict[int, dict] = field(default_factory=dict)
    firewalls: dict[str, dict] = field(default_factory=dict)
    domains: dict[str, dict[int, dict]] = field(default_factory=dict)  # zone -> id -> record
    images: dict[int, dict] = field(default_factory=dict)
    actions: dict[int, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, dict, Any]] = field(default_factory=list)  # method, path, query, body
    invalid: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    never_active: bool = False
    sticky: set[str] = field(default_factory=set)  # kinds whose DELETE answers 204 and does nothing


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, ident: str, message: str) -> tuple[int, dict, dict]:
    return status, {"id": ident, "message": message, "request_id": "simulated"}, {}


def _public(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith("_")}


class DnsPublisher(Protocol):
    def publish(self, fqdn: str, kind: str, values: list[str]) -> None: ...


class Simulator:
    def __init__(
        self,
        tmp: Path,
        zones: tuple[str, ...] = ("example.org",),
        timing: Timing | None = None,
        machines: Machines | None = None,
        dns: DnsPublisher | None = None,
    ):
        self.state = State(domains={z: {} for z in zones})
        self.timing = timing or Timing()
        self.machines = machines
        self.dns = dns
        self.ids = itertools.count(100001)
        self.lock = threading.RLock()
        self.state.images[1] = {
            "id": 1,
            "name": "13 x64",
            "distribution": "Debian",
            "slug": STOCK_SLUG,
            "public": True,
            "regions": list(REGIONS),
            "created_at": "2025-08-10T00:00:00Z",
            "type": "base",
            "min_disk_size": 25,
            "size_gigabytes": 2.4,
            "description": "Debian 13 x64 (simulated: tests/sim/stock)",
            "tags": [],
            "status": "available",
        }
        self.ca = trustme.CA(organization_name="Outband DigitalOcean API simulator")
        self.ca_file = tmp / "simulated-do-api-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict | None, headers: dict[str, str]) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(*_error(401, "unauthorized", "Unable to authenticate you"))
                    return
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._reply(*_error(400, "bad_request", "body is not JSON"))
                    return
                self._reply(*sim.handle(method, url.path, query, body))

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.endpoint = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Simulator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.machines is not None:
            for droplet in list(self.state.droplets.values()):
                self.machines.destroy(droplet)

    # -- for tests ------------------------------------------------------------------------------
    def fail(self, method: str, path: str, status: int, times: int = 1, **kwargs: Any) -> None:
        self.state.failures.append(Failure(method, path, status, times, **kwargs))

    def bodies(self, method: str, path: str) -> list[Any]:
        return [b for m, p, _, b in self.state.requests if m == method and re.fullmatch(path, p)]

    def count(self, method: str, path: str) -> int:
        return len(self.bodies(method, path))

    def add_snapshot(self, name: str, created_at: str, regions: tuple[str, ...] = ("fra1",)) -> dict:
        image = self._new_image(name, list(regions), droplet_id=None)
        image["created_at"] = created_at
        return image

    def resources_left(self) -> list[str]:
        """What the account still holds apart from images (for "nothing left behind")."""
        with self.lock:
            self._advance()
            s = self.state
            left = [f"droplet {d['id']} ({d['status']})" for d in s.droplets.values()]
            left += [f"firewall {f['id']}" for f in s.firewalls.values() if not f.get("_foreign")]
            left += [f"record {r['id']} {r['name']}" for z in s.domains.values() for r in z.values()]
            left += [f"ssh key {k['id']}" for k in s.keys.values()]
            return left

    def add_foreign_firewall(self) -> dict:
        """Someone else's firewall in the account, as the API lists one without tags (`tags: null`)."""
        fw = {
            "id": f"foreign-{next(self.ids)}",
            "name": "someone-elses",
            "status": "succeeded",
            "created_at": _now_iso(),
            "inbound_rules": [],
            "outbound_rules": [],
            "droplet_ids": [],
            "tags": None,
            "pending_changes": [],
            "_foreign": True,
        }
        self.state.firewalls[fw["id"]] = fw
        return fw

    # -- time ---------------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Move every resource to the state its age gives it (the simulator has no ticking clock)."""
        now = time.monotonic()
        t = self.timing
        for d in list(self.state.droplets.values()):
            if d["_deleted"] is not None:
                if now - d["_deleted"] >= t.archive_for:
                    del self.state.droplets[d["id"]]
                continue
            aged = now - d["_created"] >= t.active_after
            if d["status"] == "new" and d["_booted"] and aged and not self.state.never_active:
                d["status"] = "active"
                d["_active_at"] = now
            if d["status"] == "active" and not d["networks"]["v4"] and now - d["_active_at"] >= t.networks_after:
                d["networks"]["v4"] = d["_networks"]
                d["networks"]["v6"] = d["_networks6"]
        for fw in self.state.firewalls.values():
            if fw["status"] == "waiting" and now - fw["_created"] >= t.firewall_waiting_for:
                fw["status"] = "succeeded"
                for change in fw["pending_changes"]:
                    change["status"] = "succeeded"
                fw["pending_changes"] = []
        for action in self.state.actions.values():
            if action["status"] == "in-progress" and action["_done"]():
                action["status"] = "completed"
                action["completed_at"] = _now_iso()

    # -- the API ------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, dict | None, dict]:
        problems = spec_problems(method, path, query, body)
        with self.lock:
            self.state.requests.append((method, path, query, body))
            if problems:
                self.state.invalid.append(f"{method} {path}: {'; '.join(problems)[:400]}")
                return _error(422, "unprocessable_entity", f"not a request DigitalOcean's API allows: {problems[0]}")
            failure = next(
                (f for f in self.state.failures if f.times > 0 and f.method == method and re.fullmatch(f.path, path)),
                None,
            )
            if failure is not None:
                failure.times -= 1
                if failure.after:
                    self._route(method, path, query, body)  # it happened; the client is told otherwise
                headers = {}
                if failure.ratelimit_reset_in is not None:
                    reset = int(time.time() + failure.ratelimit_reset_in)
                    headers = {"ratelimit-limit": "5000", "ratelimit-remaining": "0", "ratelimit-reset": str(reset)}
                status, reply, _ = _error(failure.status, "simulated", f"simulated {failure.status}")
                if failure.status == 429:
                    reply = {"id": "too_many_requests", "message": "API Rate limit exceeded."}
                return status, reply, headers
            self._advance()
            return self._route(method, path, query, body)

    def _page(self, path: str, query: dict, key: str, items: list[dict]) -> tuple[int, dict, dict]:
        per_page = int(query.get("per_page", ["20"])[0])
        page = int(query.get("page", ["1"])[0])
        chunk = items[(page - 1) * per_page : page * per_page]
        pages: dict[str, str] = {}
        if page * per_page < len(items):
            pages["next"] = f"{self.endpoint}{path}?page={page + 1}&per_page={per_page}"
        return 200, {key: [_public(x) for x in chunk], "links": {"pages": pages}, "meta": {"total": len(items)}}, {}

    def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, dict | None, dict]:
        s = self.state
        if path == "/v2/account" and method == "GET":
            return 200, {"account": {"droplet_limit": 25, "email": "sim@example.org", "status": "active"}}, {}
        # SSH keys
        if path == "/v2/account/keys":
            if method == "GET":
                return self._page(path, query, "ssh_keys", list(s.keys.values()))
            if method == "POST":
                if any(k["public_key"].split()[:2] == body["public_key"].split()[:2] for k in s.keys.values()):
                    return _error(422, "unprocessable_entity", "SSH Key is already in use on your account")
                key = {"id": next(self.ids), "name": body["name"], "public_key": body["public_key"]}
                key["fingerprint"] = f"sim:{key['id']}"
                s.keys[key["id"]] = key
                return 201, {"ssh_key": key}, {}
        if (m := re.fullmatch(r"/v2/account/keys/(\d+)", path)) and method == "DELETE":
            if "key" in s.sticky:
                return 204, None, {}
            return (204, None, {}) if s.keys.pop(int(m[1]), None) else _error(404, "not_found", "not found")
        # Droplets
        if path == "/v2/droplets":
            if method == "GET":
                tag = query.get("tag_name", [None])[0]
                items = [d for d in s.droplets.values() if tag is None or tag in d["tags"]]
                return self._page(path, query, "droplets", items)
            if method == "POST":
                return self._create_droplet(body)
        if m := re.fullmatch(r"/v2/droplets/(\d+)", path):
            d = s.droplets.get(int(m[1]))
            if d is None:
                return _error(404, "not_found", "The resource you were accessing could not be found.")
            if method == "GET":
                return 200, {"droplet": _public(d)}, {}
            if method == "DELETE":
                if d["_deleted"] is None and "droplet" not in s.sticky:
                    d["_deleted"] = time.monotonic()
                    d["status"] = "archive"
                    if self.machines is not None:
                        self.machines.destroy(d)
                return 204, None, {}
        if (m := re.fullmatch(r"/v2/droplets/(\d+)/actions", path)) and method == "POST":
            return self._droplet_action(int(m[1]), body)
        if m := re.fullmatch(r"/v2/droplets/(\d+)/actions/(\d+)", path):
            action = s.actions.get(int(m[2]))
            if action is None or action["resource_id"] != int(m[1]):
                return _error(404, "not_found", "not found")
            return 200, {"action": _public(action)}, {}
        if m := re.fullmatch(r"/v2/actions/(\d+)", path):
            action = s.actions.get(int(m[1]))
            return (200, {"action": _public(action)}, {}) if action else _error(404, "not_found", "not found")
        if m := re.fullmatch(r"/v2/droplets/(\d+)/snapshots", path):
            items = [i for i in s.images.values() if i.get("_droplet") == int(m[1])]
            return self._page(path, query, "snapshots", items)
        # Images and snapshots
        if path == "/v2/images" and method == "GET":
            items = list(s.images.values())
            if query.get("private", ["false"])[0] == "true":
                items = [i for i in items if not i["public"]]
            return self._page(path, query, "images", items)
        if (m := re.fullmatch(r"/v2/images/([\w.-]+)", path)) and method == "GET":
            image = self._image(m[1])
            return (200, {"image": _public(image)}, {}) if image else _error(404, "not_found", "not found")
        if path == "/v2/snapshots" and method == "GET":
            items = sorted((i for i in s.images.values() if i["type"] == "snapshot"), key=lambda i: i["created_at"])
            return self._page(path, query, "snapshots", [self._as_snapshot(i) for i in items])
        if m := re.fullmatch(r"/v2/(?:snapshots|images)/(\d+)", path):
            image = s.images.get(int(m[1]))
            if method == "GET":
                return (200, {"snapshot": self._as_snapshot(image)}, {}) if image else _error(404, "not_found", "nf")
            if method == "DELETE":
                if image is None or image["public"]:
                    return _error(404, "not_found", "not found")
                del s.images[image["id"]]
                if self.machines is not None:
                    self.machines.remove_image(image)
                return 204, None, {}
        # Firewalls
        if path == "/v2/firewalls":
            if method == "GET":
                return self._page(path, query, "firewalls", list(s.firewalls.values()))
            if method == "POST":
                if any(f["name"] == body["name"] for f in s.firewalls.values()):
                    return _error(409, "conflict", "a firewall with this name already exists")
                fw = {
                    "id": f"{next(self.ids):08x}-0000-4000-8000-000000000000",
                    "status": "waiting",
                    "created_at": _now_iso(),
                    "droplet_ids": body.get("droplet_ids") or [],
                    "tags": body.get("tags") or [],
                    "name": body["name"],
                    "inbound_rules": body.get("inbound_rules", []),
                    "outbound_rules": body.get("outbound_rules", []),
                    "pending_changes": [{"droplet_id": 0, "removing": False, "status": "waiting"}],
                    "_created": time.monotonic(),
                }
                s.firewalls[fw["id"]] = fw
                return 202, {"firewall": _public(fw)}, {}
        if m := re.fullmatch(r"/v2/firewalls/([\w-]+)", path):
            fw = s.firewalls.get(m[1])
            if fw is None:
                return _error(404, "not_found", "not found")
            if method == "GET":
                return 200, {"firewall": _public(fw)}, {}
            if method == "DELETE":
                if "firewall" not in s.sticky:
                    del s.firewalls[m[1]]
                return 204, None, {}
        # Domains
        if m := re.fullmatch(r"/v2/domains/([\w.-]+)", path):
            if m[1] not in s.domains:
                return _error(404, "not_found", "The resource you were accessing could not be found.")
            return 200, {"domain": {"name": m[1], "ttl": 1800, "zone_file": ""}}, {}
        if m := re.fullmatch(r"/v2/domains/([\w.-]+)/records", path):
            zone = s.domains.get(m[1])
            if zone is None:
                return _error(404, "not_found", "The resource you were accessing could not be found.")
            if method == "GET":
                items = list(zone.values())
                if "name" in query:  # DigitalOcean filters by the fully qualified name
                    fqdn = query["name"][0]
                    items = [r for r in items if self._fqdn(r["name"], m[1]) == fqdn]
                if "type" in query:
                    items = [r for r in items if r["type"] == query["type"][0]]
                return self._page(path, query, "domain_records", items)
            if method == "POST":
                record = {"id": next(self.ids), "ttl": 1800, "priority": None, "port": None, "weight": None}
                record.update({"flags": None, "tag": None, **body})
                zone[record["id"]] = record
                self._publish_later(m[1], record)
                return 201, {"domain_record": record}, {}
        if m := re.fullmatch(r"/v2/domains/([\w.-]+)/records/(\d+)", path):
            zone = s.domains.get(m[1], {})
            if method == "DELETE":
                record = zone.pop(int(m[2]), None)
                if record is None:
                    return _error(404, "not_found", "not found")
                self._publish(m[1], record)
                return 204, None, {}
        return _error(404, "not_found", f"simulator: no route for {method} {path}")

    # -- droplets ---------------------------------------------------------------------------------
    def _image(self, ref: str | int) -> dict | None:
        for image in self.state.images.values():
            if str(image["id"]) == str(ref) or (image["slug"] and image["slug"] == ref):
                return image
        return None

    def _create_droplet(self, body: dict) -> tuple[int, dict, dict]:
        image = self._image(body["image"])
        if image is None:
            return _error(422, "unprocessable_entity", "You specified an invalid image for Droplet creation.")
        if body["region"] not in image["regions"]:
            return _error(422, "unprocessable_entity", f"image {image['id']} is not available in {body['region']}")
        if len((body.get("user_data") or "").encode()) > 64 * 1024:
            return _error(422, "unprocessable_entity", "user_data must be no more than 64 KiB")
        keys = []
        for ref in body.get("ssh_keys") or []:
            key = next((k for k in self.state.keys.values() if ref in (k["id"], k["fingerprint"])), None)
            if key is None:
                return _error(422, "unprocessable_entity", f"ssh key {ref} does not exist")
            keys.append(key["public_key"])
        droplet_id = next(self.ids)
        droplet = {
            "id": droplet_id,
            "name": body["name"],
            "status": "new",
            "memory": 2048,
            "vcpus": 1,
            "disk": 50,
            "locked": False,
            "created_at": _now_iso(),
            "image": _public(image),
            "size_slug": body["size"],
            "region": {"slug": body["region"], "name": body["region"]},
            "tags": list(body.get("tags") or []),
            "networks": {"v4": [], "v6": []},
            "features": [],
            "_created": time.monotonic(),
            "_active_at": 0.0,
            "_deleted": None,
            "_booted": False,
            "_networks": [],
            "_networks6": [],
        }
        metadata = {
            "droplet_id": droplet_id,
            "hostname": body["name"],
            "user_data": body.get("user_data"),
            "vendor_data": "",
            "public_keys": keys,
            "region": body["region"],
            "tags": droplet["tags"],
            "features": {"dhcp_enabled": False},
        }
        self.state.droplets[droplet_id] = droplet
        if self.machines is not None:
            address = self.machines.boot(droplet, image, metadata)
        else:
            address = f"203.0.113.{droplet_id % 250 + 2}"
        droplet["_booted"] = True
        if body.get("ipv6"):
            droplet["_networks6"] = [
                {"ip_address": f"2001:db8::{droplet_id:x}", "netmask": 64, "gateway": "2001:db8::1", "type": "public"}
            ]
        droplet["_networks"] = [
            {"ip_address": address, "netmask": "255.255.255.0", "gateway": "203.0.113.1", "type": "public"},
            {"ip_address": f"10.110.0.{droplet_id % 250 + 2}", "netmask": "255.255.240.0", "type": "private"},
        ]
        return 202, {"droplet": _public(droplet), "links": {"actions": []}}, {}

    def _droplet_action(self, droplet_id: int, body: dict) -> tuple[int, dict, dict]:
        d = self.state.droplets.get(droplet_id)
        if d is None or d["_deleted"] is not None:
            return _error(404, "not_found", "not found")
        kind = body["type"]
        done: Callable[[], bool] = lambda: True  # noqa: E731
        machines = self.machines
        if kind in ("shutdown", "power_off"):
            if machines is not None:
                (machines.shutdown if kind == "shutdown" else machines.power_off)(d)

                def done() -> bool:
                    if machines.running(d):
                        return False
                    d["status"] = "off"
                    return True
            else:
                d["status"] = "off"
        elif kind == "snapshot":
            image = self._new_image(body.get("name") or f"{d['name']}-snapshot", [d["region"]["slug"]], droplet_id)
            image["status"] = "pending"
            finished = threading.Event()

            def take() -> None:
                if machines is not None:
                    machines.snapshot(d, image)
                image["status"] = "available"
                finished.set()

            threading.Thread(target=take, daemon=True).start()
            done = finished.is_set
        elif kind == "power_on":
            d["status"] = "active"
        else:
            return _error(422, "unprocessable_entity", f"simulator: action {kind!r} is not simulated")
        action = {
            "id": next(self.ids),
            "status": "in-progress",
            "type": kind,
            "started_at": _now_iso(),
            "completed_at": None,
            "resource_id": droplet_id,
            "resource_type": "droplet",
            "region_slug": d["region"]["slug"],
            "_done": done,
        }
        self.state.actions[action["id"]] = action
        return 201, {"action": _public(action)}, {}

    def _new_image(self, name: str, regions: list[str], droplet_id: int | None) -> dict:
        image = {
            "id": next(self.ids),
            "name": name,
            "distribution": "Debian",
            "slug": None,
            "public": False,
            "regions": regions,
            "created_at": _now_iso(),
            "type": "snapshot",
            "min_disk_size": 25,
            "size_gigabytes": 2.1,
            "description": "",
            "tags": [],
            "status": "available",
            "_droplet": droplet_id,
        }
        self.state.images[image["id"]] = image
        return image

    @staticmethod
    def _as_snapshot(image: dict) -> dict:
        return {
            "id": str(image["id"]),
            "name": image["name"],
            "created_at": image["created_at"],
            "regions": image["regions"],
            "resource_id": str(image.get("_droplet") or ""),
            "resource_type": "droplet",
            "min_disk_size": image["min_disk_size"],
            "size_gigabytes": image["size_gigabytes"],
            "tags": image["tags"],
        }

    # -- DNS --------------------------------------------------------------------------------------
    @staticmethod
    def _fqdn(name: str, zone: str) -> str:
        return zone if name == "@" else f"{name}.{zone}"

    def _publish(self, zone: str, record: dict) -> None:
        """Tell DNS what the zone now holds for this record's name and type."""
        if self.dns is None or record["type"] not in ("A", "AAAA"):
            return
        fqdn = self._fqdn(record["name"], zone)
        values = [
            r["data"]
            for r in self.state.domains.get(zone, {}).values()
            if r["type"] == record["type"] and self._fqdn(r["name"], zone) == fqdn
        ]
        self.dns.publish(fqdn, record["type"], values)

    def _publish_later(self, zone: str, record: dict) -> None:
        def later() -> None:
            with self.lock:
                self._publish(zone, record)

        timer = threading.Timer(self.timing.dns_propagation, later)
        timer.daemon = True
        timer.start()
