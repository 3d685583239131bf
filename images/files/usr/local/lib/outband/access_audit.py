"""The access audit: who signed in (or failed to), from where, with which client and device; new
devices, accounts created, password resets, deactivations — read from Synapse's own log on the
appliance (the journal keeps it across reboots), so deactivated accounts keep their history.

Synapse logs each request's lines under one request id (e.g. POST-42) and ends them with an access
line (client address, status, method, path, user agent). These pure functions group a journal's
lines by request and turn each finished request into events. Two readers share this one file
(stdlib only): `invoke audit` runs it on the operator's side over `journalctl -o json` read through
the pinned SSH channel (appliance/audit.py loads it from here), and the case recorder on the
appliance (/usr/local/lib/outband/recorder.py) follows the journal with it into the case record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from urllib.parse import unquote

LINE = re.compile(r"^\S+ \S+ - (?P<logger>\S+) - \d+ - (?P<level>\w+) - (?P<request>\S+) - (?P<message>.*)$")
ACCESS = re.compile(
    r"^(?P<ip>\S+) - \d+ - \{(?P<requester>[^}]*)\} Processed request: .* (?P<status>\d{3}) "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" "(?P<agent>[^"]*)"'
)
LOGIN_ATTEMPT = re.compile(r"^Got login request with identifier: (?P<identifier>\{.*?\}), ")
LOGGED_IN = re.compile(r"^Logging in user (?P<user>@\S+) on device (?P<device>\S+)")
ACTING_AS = re.compile(r"^Logging in user (?P<admin>@\S+) as (?P<user>@\S+)")
FAILED = re.compile(r"^(?:Failed password login for user (?P<user>@\S+)|Attempted to login as (?P<unknown>@\S+) but)")
DEACTIVATED = re.compile(r"^(?P<by>@\S+) requested deactivation of (?P<user>@\S+) erase_data=(?P<erase>\w+)")
USER_IN_PATH = re.compile(r"^/_synapse/admin/v\d/(?P<what>reset_password|register)(?:/(?P<user>[^/?]+))?")


@dataclass(frozen=True)
class Event:
    time: str  # ISO 8601, UTC
    event: str
    account: str
    device: str = ""
    device_name: str = ""
    address: str = ""
    client: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def journal_lines(raw: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """(time, key, message) from `journalctl -o json` lines; key = process id + request id (Synapse
    counts its requests from 1 again at each start)."""
    for line in raw:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald gives non-UTF-8 messages as bytes
            message = bytes(message).decode(errors="replace")
        match = LINE.match(message or "")
        if not match:
            continue
        stamp = dt.datetime.fromtimestamp(int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6, dt.UTC)
        key = f"{entry.get('_PID', '?')}/{match['request']}"
        yield stamp.isoformat(timespec="seconds"), key, match["message"]


def _identifier_user(text: str, domain: str) -> str:
    user = re.search(r"'user': '([^']+)'", text)
    if not user:
        return "?"
    name = user.group(1)
    return name if name.startswith("@") else f"@{name}:{domain}"


def request_events(time: str, lines: list[str], access: re.Match, domain: str, seen_devices: set[str]) -> list[Event]:
    """The events one finished request amounts to (most requests: none)."""
    address, agent, status = access["ip"], access["agent"], int(access["status"])
    path, requester = unquote(access["path"]), access["requester"].split("|")[0]
    events: list[Event] = []
    attempted = next((LOGIN_ATTEMPT.match(m) for m in lines if LOGIN_ATTEMPT.match(m)), None)
    for message in lines:
        if m := LOGGED_IN.match(message):
            device = m["device"]
            kind = "sign-in" if attempted else "account created" if "/register" in path else "new session"
            if device not in seen_devices:
                kind += ", new device"
                seen_devices.add(device)
            events.append(Event(time, kind, m["user"], device, address=address, client=agent))
        elif m := ACTING_AS.match(message):
            events.append(
                Event(time, "operator acted as", m["user"], address=address, client=agent, detail=f"by {m['admin']}")
            )
        elif m := FAILED.match(message):
            who = m["user"] or m["unknown"]
            events.append(
                Event(
                    time,
                    "sign-in failed",
                    who,
                    address=address,
                    client=agent,
                    detail="" if m["user"] else "no such account",
                )
            )
        elif m := DEACTIVATED.match(message):
            detail = f"by {m['by']}" + (", data erased" if m["erase"] == "True" else "")
            events.append(Event(time, "deactivated", m["user"], address=address, client=agent, detail=detail))
    if attempted and not events and status >= 400:  # refused before the password check (rate limit, deactivated)
        who = _identifier_user(attempted["identifier"], domain)
        events.append(Event(time, "sign-in failed", who, address=address, client=agent, detail=f"HTTP {status}"))
    admin = USER_IN_PATH.match(path)
    if admin and admin["what"] == "reset_password" and status == 200:
        who = admin["user"] or "?"
        events.append(Event(time, "password reset", who, address=address, client=agent, detail=f"by {requester}"))
    return events


class Reader:
    """Journal lines in, events out, one line at a time (a follower keeps one across reads)."""

    def __init__(self, domain: str, seen_devices: Iterable[str] = ()):
        self.domain = domain
        self.pending: dict[str, list[str]] = {}
        self.seen_devices: set[str] = set(seen_devices)

    def feed(self, raw: Iterable[str]) -> Iterator[Event]:
        for time, key, message in journal_lines(raw):
            access = ACCESS.match(message)
            if access is None:
                self.pending.setdefault(key, []).append(message)
                continue
            yield from request_events(time, self.pending.pop(key, []), access, self.domain, self.seen_devices)


def events(raw: Iterable[str], domain: str) -> Iterator[Event]:
    """Events in the order their requests finished."""
    yield from Reader(domain).feed(raw)


def name_devices(found: list[Event], names: dict[str, str]) -> list[Event]:
    """Each device's current display name (the admin API's), where the device still exists."""
    return [dataclasses.replace(e, device_name=names.get(e.device, "")) if e.device else e for e in found]
