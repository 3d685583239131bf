"""FAKE DigitalOcean API — a test double at the one boundary we cannot reach from here.

Serves exactly the v2 endpoints Outband uses, over HTTPS on loopback (pydo refuses a bearer token
over plain http), with realistic payloads, in-memory state, pagination, and failure injection.
The real pydo client talks to it; nothing of Outband's own code is faked.
"""

from __future__ import annotations

import itertools
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import trustme

TOKEN = "fake-do-token-for-tests"


@dataclass
class Failure:
    method: str
    path: str  # regex on the path
    status: int
    times: int = 1
    body: dict[str, Any] | None = None


@dataclass
class State:
    keys: dict[int, dict] = field(default_factory=dict)
    droplets: dict[int, dict] = field(default_factory=dict)
    firewalls: dict[str, dict] = field(default_factory=dict)
    records: dict[str, dict[int, dict]] = field(default_factory=dict)  # zone -> id -> record
    snapshots: dict[str, dict] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, json body)
    failures: list[Failure] = field(default_factory=list)
    polls_until_active: int = 2  # GETs of a new droplet before it turns active; -1: never
    sticky: set[str] = field(default_factory=set)  # kinds whose DELETE answers 204 but keeps the resource
    ids: itertools.count = field(default_factory=lambda: itertools.count(1000))


def _error(status: int, ident: str, message: str) -> tuple[int, dict]:
    return status, {"id": ident, "message": message, "request_id": "fake"}


class FakeDigitalOcean:
    def __init__(self, tmp: Path, zones: tuple[str, ...] = ("example.org",)):
        self.state = State(records={z: {} for z in zones})
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tmp / "fake-do-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: dict | None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                url = urlparse(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(*_error(401, "unauthorized", "Unable to authenticate you"))
                    return
                with fake.lock:
                    fake.state.requests.append((method, url.path, body))
                    status, reply = fake.route(method, url.path, parse_qs(url.query), body)
                self._reply(status, reply)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.endpoint = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDigitalOcean:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- helpers for tests ------------------------------------------------------------------------
    def fail(self, method: str, path: str, status: int, times: int = 1) -> None:
        self.state.failures.append(Failure(method, path, status, times))

    def bodies(self, method: str, path: str) -> list[Any]:
        return [b for m, p, b in self.state.requests if m == method and re.fullmatch(path, p)]

    def add_snapshot(self, name: str, created_at: str) -> dict:
        snap = {
            "id": str(next(self.state.ids)),
            "name": name,
            "created_at": created_at,
            "regions": ["fra1"],
            "resource_id": "1",
            "resource_type": "droplet",
            "min_disk_size": 25,
            "size_gigabytes": 2.1,
            "tags": [],
        }
        self.state.snapshots[snap["id"]] = snap
        return snap

    # -- the API ----------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, dict | None]:
        for failure in self.state.failures:
            if failure.times > 0 and failure.method == method and re.fullmatch(failure.path, path):
                failure.times -= 1
                return _error(failure.status, "injected", f"injected {failure.status}")
        s = self.state
        per_page = int(query.get("per_page", ["20"])[0])
        page = int(query.get("page", ["1"])[0])

        def paged(key: str, items: list[dict]) -> tuple[int, dict]:
            chunk = items[(page - 1) * per_page : page * per_page]
            pages = {}
            if page * per_page < len(items):
                pages["next"] = f"{self.endpoint}{path}?page={page + 1}&per_page={per_page}"
            return 200, {key: chunk, "links": {"pages": pages}, "meta": {"total": len(items)}}

        if path == "/v2/account/keys":
            if method == "GET":
                return paged("ssh_keys", list(s.keys.values()))
            if method == "POST":
                if any(k["public_key"] == body["public_key"] for k in s.keys.values()):
                    return _error(422, "unprocessable_entity", "SSH Key is already in use on your account")
                key = {
                    "id": next(s.ids),
                    "name": body["name"],
                    "public_key": body["public_key"],
                    "fingerprint": body.get("_fingerprint", f"fp:{len(s.keys)}"),
                }
                s.keys[key["id"]] = key
                return 201, {"ssh_key": key}
        if (m := re.fullmatch(r"/v2/account/keys/(\d+)", path)) and method == "DELETE":
            return (204, None) if s.keys.pop(int(m[1]), None) else _error(404, "not_found", "not found")
        if path == "/v2/droplets":
            if method == "GET":
                tag = query.get("tag_name", [None])[0]
                items = [d for d in s.droplets.values() if tag is None or tag in d["tags"]]
                return paged("droplets", items)
            if method == "POST":
                d = {
                    "id": next(s.ids),
                    "name": body["name"],
                    "status": "new",
                    "memory": 2048,
                    "vcpus": 1,
                    "disk": 50,
                    "locked": False,
                    "created_at": "2026-11-26T12:00:00Z",
                    "image": {"id": body["image"]},
                    "size_slug": body["size"],
                    "region": {"slug": body["region"]},
                    "tags": list(body.get("tags", [])),
                    "networks": {"v4": [], "v6": []},
                    "_polls": 0,
                    "_request": body,
                }
                s.droplets[d["id"]] = d
                return 202, {"droplet": _public(d), "links": {"actions": []}}
        if m := re.fullmatch(r"/v2/droplets/(\d+)", path):
            d = s.droplets.get(int(m[1]))
            if d is None:
                return _error(404, "not_found", "The resource you were accessing could not be found.")
            if method == "GET":
                d["_polls"] += 1
                if s.polls_until_active >= 0 and d["_polls"] >= s.polls_until_active and d["status"] == "new":
                    n = d["id"] % 250
                    d["status"] = "active"
                    d["networks"]["v4"] = [
                        {
                            "ip_address": f"203.0.113.{n}",
                            "netmask": "255.255.255.0",
                            "gateway": "203.0.113.1",
                            "type": "public",
                        },
                        {
                            "ip_address": f"10.110.0.{n}",
                            "netmask": "255.255.240.0",
                            "gateway": "10.110.0.1",
                            "type": "private",
                        },
                    ]
                    if d["_request"].get("ipv6"):
                        d["networks"]["v6"] = [
                            {
                                "ip_address": f"2001:db8::{n:x}",
                                "netmask": 64,
                                "gateway": "2001:db8::1",
                                "type": "public",
                            }
                        ]
                return 200, {"droplet": _public(d)}
            if method == "DELETE":
                if "droplet" not in s.sticky:
                    del s.droplets[d["id"]]
                return 204, None
        if path == "/v2/firewalls":
            if method == "GET":
                return paged("firewalls", list(s.firewalls.values()))
            if method == "POST":
                fw = {
                    "id": f"fw-{next(s.ids)}",
                    "status": "succeeded",
                    "created_at": "2026-11-26T12:00:00Z",
                    "pending_changes": [],
                    **body,
                }
                s.firewalls[fw["id"]] = fw
                return 202, {"firewall": fw}
        if (m := re.fullmatch(r"/v2/firewalls/([\w-]+)", path)) and method == "DELETE":
            return (204, None) if s.firewalls.pop(m[1], None) else _error(404, "not_found", "not found")
        if m := re.fullmatch(r"/v2/domains/([\w.-]+)/records", path):
            zone = s.records.get(m[1])
            if zone is None:
                return _error(404, "not_found", "The resource you were accessing could not be found.")
            if method == "GET":
                return paged("domain_records", list(zone.values()))
            if method == "POST":
                record = {
                    "id": next(s.ids),
                    "ttl": 1800,
                    "priority": None,
                    "port": None,
                    "weight": None,
                    "flags": None,
                    "tag": None,
                    **body,
                }
                zone[record["id"]] = record
                return 201, {"domain_record": record}
        if m := re.fullmatch(r"/v2/domains/([\w.-]+)/records/(\d+)", path):
            zone = s.records.get(m[1], {})
            if method == "DELETE":
                return (204, None) if zone.pop(int(m[2]), None) else _error(404, "not_found", "not found")
        if path == "/v2/snapshots" and method == "GET":
            return paged("snapshots", sorted(s.snapshots.values(), key=lambda x: x["created_at"]))
        if (m := re.fullmatch(r"/v2/snapshots/(\d+)", path)) and method == "DELETE":
            return (204, None) if s.snapshots.pop(m[1], None) else _error(404, "not_found", "not found")
        return _error(404, "not_found", f"fake: no route for {method} {path}")


def _public(droplet: dict) -> dict:
    return {k: v for k, v in droplet.items() if not k.startswith("_")}
