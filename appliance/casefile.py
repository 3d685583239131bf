"""An exported case record, offline: check it (hash chain, media, signed manifest) and render it.

The format is the recorder's (images/files/usr/local/lib/outband/recorder.py): events.jsonl, one
canonical JSON object per line, each with `seq` (1, 2, …) and `prev` (the SHA-256 of the line
before; 64 zeros for the first); media/<sha256 of the content>; manifest.json holding
{"manifest": {case, events, head, media, signed}, "signature": base64 ed25519 over the manifest's
canonical JSON}. A unit test writes a record with the recorder's own code and checks it here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64
ACCESS_TYPE = "outband.access"  # the recorder's lines from Synapse's log (no room)
ACCESS_PAGE = "access"
TEMPLATES = Path(__file__).parent / "templates" / "case"


def line_hash(raw: bytes) -> str:
    return hashlib.sha256(raw.rstrip(b"\n")).hexdigest()


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_fingerprint(public_b64: str) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(public_b64 + "=")).digest()).decode()[:16]


@dataclass(frozen=True)
class Problem:
    where: str  # "line 12", "media/<sha256>", "manifest.json"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def read_lines(folder: Path) -> list[bytes]:
    path = folder / "events.jsonl"
    return path.read_bytes().splitlines() if path.exists() else []


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(folder: Path, public_key: str) -> list[Problem]:
    """Every way the folder differs from what the recorder signed, each with its position."""
    problems: list[Problem] = []
    lines = read_lines(folder)
    prev, expected = GENESIS, 1
    for i, raw in enumerate(lines, 1):
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
            problems.append(Problem(f"line {i}", "is not valid JSON: it was changed"))
        if line is not None:
            # Named once where the numbering breaks, then followed from there.
            if line.get("seq") != expected:
                problems.append(
                    Problem(
                        f"line {i}",
                        f"says it is event {line.get('seq')}, not {expected}: lines were removed, added or moved",
                    )
                )
            expected = line.get("seq", expected) if isinstance(line.get("seq"), int) else expected
            if line.get("prev") != prev:
                problems.append(
                    Problem(
                        f"line {i}",
                        f"does not follow line {i - 1}: line {i - 1} was changed, or lines were removed or moved here",
                    )
                )
            media = line.get("media") or {}
            if media.get("sha256"):
                problems += _check_media(folder, media["sha256"], f"line {i}")
        prev, expected = line_hash(raw), expected + 1
    problems += _check_manifest(folder, lines, public_key)
    return problems


def _check_media(folder: Path, digest: str, by: str) -> list[Problem]:
    path = folder / "media" / digest
    if not path.is_file():
        return [Problem(f"media/{digest}", f"is missing ({by} refers to it)")]
    if sha256_file(path) != digest:
        return [Problem(f"media/{digest}", f"was changed: its content no longer has this hash ({by} refers to it)")]
    return []


def _check_manifest(folder: Path, lines: list[bytes], public_key: str) -> list[Problem]:
    doc = read_manifest(folder)
    if doc is None:
        return [Problem("manifest.json", "is missing")]
    manifest, signature = doc.get("manifest", {}), doc.get("signature", "")
    problems = []
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key + "=")).verify(
            base64.b64decode(signature), canonical(manifest)
        )
    except (InvalidSignature, ValueError):
        problems.append(
            Problem(
                "manifest.json", f"its signature is not the case key's ({key_fingerprint(public_key)}, kept at launch)"
            )
        )
    count = manifest.get("events", 0)
    if len(lines) < count:
        problems.append(Problem(f"line {len(lines) + 1}", f"is missing: the signed manifest lists {count} events"))
    elif len(lines) > count:
        problems.append(Problem(f"line {count + 1}", f"and later are not in the signed manifest ({count} events)"))
    elif lines and line_hash(lines[-1]) != manifest.get("head"):
        problems.append(Problem(f"line {count}", "is not the last line the manifest signed"))
    for digest in manifest.get("media", {}):
        problems += _check_media(folder, digest, "the manifest")
    return problems


# Rendering: one page per room, in recorded order, with what later events did to earlier ones.


@dataclass
class Shown:
    line: dict[str, Any]
    body: str = ""
    kind: str = "event"  # message, state, undecryptable, redaction, edit, reaction
    edited_to: str | None = None
    redacted_by: str | None = None
    reactions: list[str] | None = None
    decrypted_later: bool = False


def _body(line: dict[str, Any]) -> str:
    content = line.get("content") or {}
    kind = line.get("type")
    if kind == "m.room.message":
        return str(content.get("body", ""))
    if kind == "m.room.member":
        return f"{line.get('state_key')} → {content.get('membership')}"
    if kind == "m.room.power_levels":
        return "power: " + ", ".join(f"{u} {p}" for u, p in sorted((content.get("users") or {}).items()))
    if kind == ACCESS_TYPE:
        parts = [content.get("event", ""), content.get("account", "")]
        parts += [f"device {content['device']}" if content.get("device") else ""]
        parts += [f"from {content['address']}" if content.get("address") else ""]
        parts += [content.get("client", ""), content.get("detail", "")]
        return " · ".join(p for p in parts if p)
    if kind in ("m.room.name", "m.room.topic"):
        return str(content.get("name") or content.get("topic") or "")
    return json.dumps(content, sort_keys=True)[:300]


def rooms(lines: list[dict[str, Any]]) -> dict[str, list[Shown]]:
    by_room: dict[str, list[Shown]] = {}
    index: dict[str, Shown] = {}
    for line in lines:
        room = line.get("room") or ACCESS_PAGE
        if line.get("type") == ACCESS_TYPE:
            by_room.setdefault(room, []).append(Shown(line, _body(line), kind="access"))
            continue
        if line.get("late"):  # the decryption of an earlier undecryptable line
            earlier = index.get(line["event_id"])
            if earlier is not None:
                earlier.line = {
                    **earlier.line,
                    "type": line["type"],
                    "content": line["content"],
                    "media": line.get("media"),
                }
                earlier.body, earlier.kind, earlier.decrypted_later = _body(earlier.line), "message", True
            continue
        shown = Shown(line, _body(line))
        content = line.get("content") or {}
        relation = content.get("m.relates_to") or {}
        if line.get("undecryptable"):
            shown.kind, shown.body = "undecryptable", f"(not decryptable: Megolm session {line.get('session_id')})"
        elif line.get("type") == "m.room.redaction":
            shown.kind = "redaction"
            target = content.get("redacts") or (line.get("raw") or {}).get("redacts")
            if target in index:
                index[target].redacted_by = f"{line.get('sender')} at {when(line.get('time'))}"
            shown.body = f"redacted {target}"
        elif relation.get("rel_type") == "m.replace":
            shown.kind = "edit"
            new = (content.get("m.new_content") or {}).get("body", "")
            if relation.get("event_id") in index:
                index[relation["event_id"]].edited_to = new
            shown.body = f"edit of {relation.get('event_id')}: {new}"
        elif line.get("type") == "m.reaction":
            shown.kind = "reaction"
            target = relation.get("event_id")
            if target in index:
                index[target].reactions = [
                    *(index[target].reactions or []),
                    f"{relation.get('key')} {line.get('sender')}",
                ]
            shown.body = f"reacted {relation.get('key')} to {target}"
        elif "state_key" in line:
            shown.kind = "state"
        elif line.get("type") == "m.room.message":
            shown.kind = "message"
        index[line["event_id"]] = shown
        by_room.setdefault(room, []).append(shown)
    return by_room


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def room_name(events: list[Shown], room_id: str) -> str:
    if room_id == ACCESS_PAGE:
        return "Access: sign-ins, failed sign-ins, new devices, resets, deactivations (Synapse's log)"
    names = [
        e.line["content"].get("name") for e in events if e.line.get("type") == "m.room.name" and e.line.get("content")
    ]
    return names[-1] if names else room_id


def page_name(room_id: str) -> str:
    return "room-" + hashlib.sha256(room_id.encode()).hexdigest()[:12] + ".html"


def render(folder: Path, about: dict[str, Any]) -> Path:
    """index.html and one page per room; files 0600 (the case holds the conversation)."""
    # Lenient about missing fields (ChainableUndefined): a line holds what its event had, nothing more.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.ChainableUndefined
    )
    env.filters["when"] = when
    lines = [json.loads(raw) for raw in read_lines(folder)]
    by_room = rooms(lines)
    listing = [
        {"id": rid, "name": room_name(ev, rid), "page": page_name(rid), "count": len(ev)} for rid, ev in by_room.items()
    ]
    for room in listing:
        text = env.get_template("room.html.j2").render(room=room, events=by_room[room["id"]], about=about)
        _write(folder / room["page"], text)
    index = folder / "index.html"
    _write(index, env.get_template("index.html.j2").render(rooms=listing, about=about, total=len(lines)))
    return index


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
