"""The case record's format, both ends: written by the appliance's recorder code (its CaseFolder,
imported from the image's files), checked and rendered by the operator's appliance.casefile.
Tampering of every kind is named at its position; the untouched record passes."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import casefile, secrets
from tests.conftest import REPO

RECORDER = REPO / "images/files/usr/local/lib/outband/recorder.py"
ROOM = "!control:case.test"


def recorder_module():
    spec = importlib.util.spec_from_file_location("outband_recorder", RECORDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_of(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_of(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode().rstrip("=")


def message(event_id: str, body: str, **content) -> dict:
    return {
        "room": ROOM,
        "event_id": event_id,
        "sender": "@fox:case.test",
        "device": "FOXDEVICE",
        "time": 1_700_000_000_000,
        "type": "m.room.message",
        "encrypted": True,
        "content": {"msgtype": "m.text", "body": body, **content},
        "raw": {"type": "m.room.encrypted", "event_id": event_id, "content": {"ciphertext": "…"}},
    }


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def case(tmp_path, key):
    """A record as the recorder writes it: a name, messages, an edit, a reaction, a redaction, an
    image, an undecryptable event and its later decryption; two commits (two sync batches)."""
    rec = recorder_module()
    folder = rec.CaseFolder(tmp_path / "case", seed_of(key), "case.test")
    folder.add(
        {
            "room": ROOM,
            "event_id": "$name",
            "sender": "@lead:case.test",
            "time": 1,
            "type": "m.room.name",
            "state_key": "",
            "content": {"name": "control"},
            "raw": {},
        }
    )
    folder.add(message("$1", "containment started"))
    folder.add(message("$2", "wrong host", **{}))
    folder.commit()
    digest = folder.store_media(b"\x89PNG fake image bytes")
    image = message("$3", "screenshot.png", msgtype="m.image")
    folder.add({**image, "media": {"sha256": digest, "size": 21, "url": "mxc://case.test/x"}})
    folder.add(
        message(
            "$4",
            "* right host",
            **{
                "m.new_content": {"msgtype": "m.text", "body": "right host"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$2"},
            },
        )
    )
    folder.add(
        {
            **message("$5", ""),
            "type": "m.reaction",
            "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$1", "key": "👍"}},
        }
    )
    folder.add({**message("$6", ""), "type": "m.room.redaction", "content": {"redacts": "$1"}})
    folder.add(
        {
            "room": ROOM,
            "event_id": "$7",
            "sender": "@owl:case.test",
            "time": 2,
            "type": "m.room.encrypted",
            "undecryptable": True,
            "session_id": "SESSION",
            "content": None,
            "raw": {},
        }
    )
    folder.add({**message("$7", "late but readable"), "late": True})
    folder.add(
        {
            "room": None,
            "type": "outband.access",
            "sender": "@fox:case.test",
            "device": "FOXDEVICE",
            "time": 3,
            "content": {
                "event": "sign-in, new device",
                "account": "@fox:case.test",
                "device": "FOXDEVICE",
                "address": "10.0.2.2",
                "client": "Chrome",
                "detail": "",
            },
            "cursor": "s=abc;i=1",
        }
    )
    folder.commit()
    return folder.root


def test_the_recorders_record_verifies(case, key):
    assert casefile.check(case, public_of(key)) == []
    lines = casefile.read_lines(case)
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, 11))


def problems(case, key) -> str:
    return "\n".join(str(p) for p in casefile.check(case, public_of(key)))


def test_a_flipped_byte_is_named_at_its_line(case, key):
    data = (case / "events.jsonl").read_bytes().splitlines(keepends=True)
    data[2] = data[2].replace(b"wrong host", b"wrong hosT")
    (case / "events.jsonl").write_bytes(b"".join(data))
    assert "line 3 was changed" in problems(case, key)


def test_a_deleted_line_is_named(case, key):
    data = (case / "events.jsonl").read_bytes().splitlines(keepends=True)
    del data[3]
    (case / "events.jsonl").write_bytes(b"".join(data))
    found = problems(case, key)
    assert "line 4: says it is event 5, not 4" in found and "line 10: is missing" in found


def test_swapped_lines_are_named(case, key):
    data = (case / "events.jsonl").read_bytes().splitlines(keepends=True)
    data[1], data[2] = data[2], data[1]
    (case / "events.jsonl").write_bytes(b"".join(data))
    assert "line 2: says it is event 3, not 2" in problems(case, key)


def test_a_changed_media_file_is_named(case, key):
    (media,) = (case / "media").iterdir()
    media.write_bytes(b"another picture")
    assert f"media/{media.name}: was changed" in problems(case, key)


def test_a_manifest_re_signed_with_another_key_fails(case, key):
    doc = json.loads((case / "manifest.json").read_text())
    other = Ed25519PrivateKey.generate()
    doc["signature"] = base64.b64encode(other.sign(casefile.canonical(doc["manifest"]))).decode()
    (case / "manifest.json").write_text(json.dumps(doc))
    assert "manifest.json: its signature is not the case key's" in problems(case, key)
    # …and a whole forged record signed with that other key passes only under that key.
    assert casefile.check(case, public_of(other)) == []


def test_a_restarted_recorder_follows_the_journal_from_its_last_access_event(case, key):
    again = recorder_module().CaseFolder(case, seed_of(key), "case.test")
    assert again.access_cursor == "s=abc;i=1" and "FOXDEVICE" in again.devices_seen


def test_a_cut_last_line_is_dropped_when_the_recorder_restarts(tmp_path, key):
    rec = recorder_module()
    folder = rec.CaseFolder(tmp_path / "c", seed_of(key), "case.test")
    folder.add(message("$1", "one"))
    folder.add(message("$2", "two"))
    folder.commit()
    with open(folder.events, "ab") as f:
        f.write(b'{"seq":3,"prev":"half a line, the power went')  # never acknowledged, never signed
    again = rec.CaseFolder(tmp_path / "c", seed_of(key), "case.test")
    assert again.count == 2 and again.has(ROOM, "$2") and not again.has(ROOM, "$3")
    again.add(message("$3", "three"))
    again.commit()
    assert casefile.check(folder.root, public_of(key)) == []


def test_the_rendered_case_shows_edits_reactions_redactions_media_and_late_decryption(case, key):
    about = {"case": "case.test", "appliance": "a", "exported": "now", "key_fingerprint": "SHA256:x"}
    index = casefile.render(case, about)
    assert "control" in index.read_text() and oct(index.stat().st_mode & 0o777) == "0o600"
    pages = {p.read_text().split("<h1>")[1].split("</h1>")[0]: p.read_text() for p in case.glob("room-*.html")}
    html = pages["control"]
    access = next(text for name, text in pages.items() if name.startswith("Access"))
    assert "sign-in, new device · @fox:case.test · device FOXDEVICE · from 10.0.2.2 · Chrome" in access
    assert "containment started" in html and "redacted by @fox:case.test" in html  # kept, marked
    assert "edited</span> → right host" in html
    assert "reactions: 👍 @fox:case.test" in html
    assert 'src="media/' in html
    assert "late but readable" in html and "decrypted later" in html
    assert "<script" not in html


def test_the_case_key_round_trips_through_the_contracts_format():
    seed = secrets.ed25519_seed()
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed + "="))
    assert secrets.ed25519_public(seed) == public_of(key)


def test_case_verify_exits_4_naming_the_line_and_0_when_untouched(case, key, tmp_path):
    (case / "export.json").write_text(json.dumps({"case_public_key": public_of(key)}))
    ok = subprocess.run(["invoke", "case.verify", str(case)], cwd=REPO, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "10 events, chain intact" in ok.stderr + ok.stdout
    data = (case / "events.jsonl").read_bytes().splitlines(keepends=True)
    data[4], data[5] = data[5], data[4]
    (case / "events.jsonl").write_bytes(b"".join(data))
    bad = subprocess.run(["invoke", "case.verify", str(case)], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad.returncode == 4 and "line 5: says it is event 6, not 5" in bad.stdout, (bad.stdout, bad.stderr)
    assert "hint:" in bad.stderr
    missing = subprocess.run(
        ["invoke", "case.verify", str(tmp_path / "nothing")], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "not an exported case" in missing.stderr


def test_the_recorder_records_the_access_events_invoke_audit_shows(tmp_path, key, monkeypatch):
    from appliance import audit

    journal = REPO / "tests/unit/fixtures/audit/journal.jsonl"
    domain = "dev.outband.test"  # the fixture's (tests/unit/test_audit.py)
    monkeypatch.syspath_prepend(str(RECORDER.parent))  # access_audit.py, beside the recorder
    rec = recorder_module()
    folder = rec.CaseFolder(tmp_path / "c", seed_of(key), domain)
    follower = rec.AccessFollower(folder, domain)
    for line in journal.read_text().splitlines():
        follower.record(line.encode())
    recorded = [json.loads(x)["content"] for x in casefile.read_lines(folder.root)]
    assert recorded and recorded == [e.as_dict() for e in audit.events(journal.read_text().splitlines(), domain)]
    assert casefile.check(folder.root, public_of(key)) == []
