"""A responder's day, for real, on one launched appliance:

1. the lead makes the accounts and #control with the operator's commands;
2. fox signs in through the served web client in a real browser (Debian's chromium), accepts the
   invite and talks;
3. owl on two matrix-nio devices (one made before fox's first message, one after) and the lead in
   a second browser: every message is decrypted by every device that existed when it was sent,
   browser→nio, nio→browser, browser→browser; a file sent from the browser arrives byte-identical;
4. the fingerprints `invoke user.devices` prints are the session keys the browser shows;
5. the lead owns #control, moderators are needed to invite or kick, the service account is absent;
6. a deactivated account's browser session ends and its sign-in fails; it stays listed;
7. `invoke audit` shows sign-ins, failures, new devices, resets and deactivations, and follows.
Screenshots of each browser step are kept under build/reports/journey/.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time

import pytest
from nio import RoomEncryptedFile, RoomInviteResponse, RoomKickResponse, ToDeviceMessage, ToDeviceResponse
from nio.crypto.attachments import decrypt_attachment

from appliance import matrix, ssh
from tests.conftest import REPO
from tests.e2e import clients
from tests.e2e.browser import Browsers, trusting_home
from tests.e2e.conftest import REPORTS, facts, invoke

pytestmark = pytest.mark.vm
APPLIANCE = "e2e-a"
SIGN_IN_SECONDS: list[float] = []


def add_user(name: str, *extra: str) -> str:
    result = invoke("user.add", name, "--name", APPLIANCE, *extra)
    return re.search(r"^password: (\S+)$", result.stdout, re.MULTILINE).group(1)


def rows(stdout: str) -> list[dict[str, str]]:
    """A piped table: a header line, then one tab-separated line per row."""
    header, *lines = [line for line in stdout.split("\n") if line]  # (no strip: a row may end in an empty cell)
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


@pytest.fixture(scope="module")
def day(journey_appliance):
    """Step 1, as the lead types it."""
    passwords = {"lead": add_user("lead", "--admin"), "fox": add_user("fox"), "owl": add_user("owl")}
    created = invoke("control-room", "--members", "lead,fox,owl", "--name", APPLIANCE)
    room_id = re.search(r"\((![^)]+)\)", created.stdout).group(1)
    return {"facts": facts(journey_appliance), "passwords": passwords, "room_id": room_id, "created": created}


@pytest.fixture(scope="module")
def browsers(day, loop, tmp_path_factory):
    f = day["facts"]
    home = trusting_home(tmp_path_factory.mktemp("browser-home"), f["acme_root"])
    b = Browsers(home, f["domain"], f["address"], REPORTS / "journey")
    loop.run(b.start())
    yield b
    loop.run(b.stop())


def in_control(name: str, day, browsers, loop):
    """A responder signed in through the web client, in #control (accepting the invite if any)."""
    r = loop.run(browsers.responder(name))
    SIGN_IN_SECONDS.append(loop.run(r.sign_in(name, day["passwords"][name])))
    loop.run(r.open_control())
    yield r
    loop.run(r.close())


@pytest.fixture(scope="module")
def fox(day, browsers, loop):
    """Step 2: fox signs in through the web client and accepts the #control invite."""
    yield from in_control("fox", day, browsers, loop)


@pytest.fixture(scope="module")
def lead(day, browsers, loop):
    yield from in_control("lead", day, browsers, loop)


@pytest.fixture(scope="module")
def owl_first(day, loop, tmp_path_factory):
    """owl's first device (matrix-nio), signed in and in #control before anyone writes."""
    device = clients.Device(day["facts"], "owl", tmp_path_factory.mktemp("owl-1"))

    async def start() -> None:
        await device.login(day["passwords"]["owl"], "owl laptop (nio)")
        await device.client.join(day["room_id"])
        await device.sync()

    loop.run(start())
    yield device
    loop.run(device.close())


def test_accounts_and_control_room_are_made_by_the_lead(day):
    assert "created by @lead:" in day["created"].stdout and "Error" not in day["created"].stderr
    again = invoke("control-room", "--members", "lead,fox,owl", "--name", APPLIANCE)
    assert "nobody new" in again.stdout and again.stderr.count("error") == 0
    # user.add leaves no device behind (it would look like a stranger's session).
    assert rows(invoke("user.devices", "owl", "--name", APPLIANCE).stdout) == []


def test_fox_signs_in_in_a_real_browser_and_joins_control(fox):
    assert fox.errors == [], fox.errors  # no "Cannot read properties of null (reading 'updateAuthData')"
    assert SIGN_IN_SECONDS and SIGN_IN_SECONDS[0] < 300


def test_every_message_is_decrypted_in_every_direction(day, fox, lead, owl_first, loop, tmp_path):
    room = day["room_id"]
    owl_second = clients.Device(day["facts"], "owl", tmp_path / "owl-2")

    async def scenario() -> None:
        # browser → nio: owl's first device existed before fox's first message.
        await fox.send("fox: containment started")
        await clients.until(lambda: "fox: containment started" in owl_first.decrypted(), [owl_first])
        # A device made after that (hydrogen-web#1115: Hydrogen used to keep its old room key).
        await owl_second.login(day["passwords"]["owl"], "owl phone (nio)")
        await clients.until(lambda: room in owl_second.client.rooms, [owl_second])
        await fox.send("fox: second message, for every device")
        both = [owl_first, owl_second]
        await clients.until(lambda: all("fox: second message, for every device" in d.decrypted() for d in both), both)
        # nio → browsers.
        await clients.until(lambda: any(True for _ in owl_first.client.device_store.active_user_devices(lead_id)), both)
        await owl_first.send(room, "owl: ack, watching the logs")
        assert await fox.sees("owl: ack, watching the logs")
        assert await lead.sees("owl: ack, watching the logs")
        # browser → browser (and the nio devices).
        await lead.send("lead: rotate the VPN keys")
        assert await fox.sees("lead: rotate the VPN keys")
        await clients.until(lambda: all("lead: rotate the VPN keys" in d.decrypted() for d in both), both)
        await fox.shot("conversation")
        await lead.shot("conversation")

    lead_id = f"@lead:{day['facts']['domain']}"
    try:
        loop.run(scenario())
    finally:
        loop.run(owl_second.close())
    # Nothing anyone sent after these devices existed stayed undecryptable for them.
    assert owl_first.undecryptable() == [] and owl_second.undecryptable() == []
    assert fox.errors == [] and lead.errors == []


BROWSER_FILE = b"incident timeline\n" + bytes(range(256)) * 40


def test_a_file_from_the_browser_arrives_byte_identical(day, fox, owl_first, loop, tmp_path):
    payload = BROWSER_FILE
    path = tmp_path / "timeline.bin"
    path.write_bytes(payload)

    async def scenario() -> bytes:
        await fox.send_file(path)
        await clients.until(lambda: any(isinstance(e, RoomEncryptedFile) for e in owl_first.seen), [owl_first])
        event = next(e for e in owl_first.seen if isinstance(e, RoomEncryptedFile))
        downloaded = await owl_first.client.download(event.url)
        return decrypt_attachment(downloaded.body, event.key["k"], event.hashes["sha256"], event.iv)

    assert loop.run(scenario()) == payload


def test_the_fingerprints_the_lead_prints_are_what_the_browser_shows(day, fox, loop):
    session_id, session_key = loop.run(fox.session_key())
    listed = {r["device"]: r for r in rows(invoke("user.devices", "fox", "--name", APPLIANCE).stdout)}
    assert listed[session_id]["fingerprint (ed25519)"] == session_key
    assert re.fullmatch(r"(\S{4} )+\S{1,4}", session_key)  # grouped by four, as read aloud


def test_the_lead_owns_control_and_members_cannot_moderate(day, owl_first, lead, loop):
    members = {r["account"]: r for r in rows(invoke("room.members", "--name", APPLIANCE).stdout)}
    domain = day["facts"]["domain"]
    assert members[f"@lead:{domain}"]["power"] in ("creator", "100")
    assert members[f"@fox:{domain}"]["power"] == "0" and members[f"@owl:{domain}"]["power"] == "0"
    assert f"@{matrix.SERVICE_ACCOUNT}:{domain}" not in members
    as_json = json.loads(invoke("room.members", "--name", APPLIANCE, "--json").stdout)
    assert {m["account"] for m in as_json} == set(members)

    async def owl_tries() -> tuple:
        invite = await owl_first.client.room_invite(day["room_id"], f"@nobody:{domain}")
        kick = await owl_first.client.room_kick(day["room_id"], f"@fox:{domain}")
        return invite, kick

    invite, kick = loop.run(owl_tries())
    assert not isinstance(invite, RoomInviteResponse) and invite.status_code == "M_FORBIDDEN"
    assert not isinstance(kick, RoomKickResponse) and kick.status_code == "M_FORBIDDEN"


def test_a_deactivated_account_is_signed_out_and_stays_listed(day, browsers, loop):
    password = add_user("mole")
    mole = loop.run(browsers.responder("mole"))
    try:
        loop.run(mole.sign_in("mole", password, room=None))
        invoke("user.deactivate", "mole", "--name", APPLIANCE)

        async def signed_out() -> None:
            # Hydrogen notices at its next sync that the session is gone, and says so.
            await mole.page.get_by_text("Your access token is no longer valid!").wait_for(timeout=90_000)
            await mole.shot("after-deactivation")
            await mole.page.get_by_role("button", name="Proceed").click()
            await mole.page.get_by_label("Username").fill("mole")
            await mole.page.get_by_label("Password").fill(password)
            await mole.page.get_by_role("button", name="Log In").click()
            await mole.page.get_by_text("password don't seem to be correct").wait_for(timeout=60_000)
            await mole.shot("sign-in-refused")

        loop.run(signed_out())
    finally:
        loop.run(mole.close())
    listed = {r["account"]: r for r in rows(invoke("user.list", "--name", APPLIANCE).stdout)}
    assert listed[f"@mole:{day['facts']['domain']}"]["deactivated"] == "yes"
    active = rows(invoke("user.list", "--active", "--name", APPLIANCE).stdout)
    assert f"@mole:{day['facts']['domain']}" not in {r["account"] for r in active}


def test_audit_shows_the_day_as_events(day, fox, loop, tmp_path):
    domain = day["facts"]["domain"]
    add_user("wren")
    invoke("user.reset-password", "wren", "--name", APPLIANCE)
    wrong = clients.Device(day["facts"], "wren", tmp_path / "wren")

    async def wrong_password() -> None:
        await wrong.open()
        response = await wrong.client.login("not-the-password")
        assert response.__class__.__name__ == "LoginError"
        await wrong.close()

    loop.run(wrong_password())
    events = rows(invoke("audit", "--name", APPLIANCE).stdout)
    fox_in = [e for e in events if e["account"] == f"@fox:{domain}" and e["event"].startswith("sign-in")]
    assert fox_in and fox_in[0]["device"] and "new device" in fox_in[0]["event"]
    assert "Chrome" in fox_in[0]["client"] and fox_in[0]["address"] == "10.0.2.2"  # the host, through qemu's NAT
    kinds = {(e["event"], e["account"]) for e in events}
    assert ("sign-in failed", f"@wren:{domain}") in kinds
    assert ("password reset", f"@wren:{domain}") in kinds
    assert ("deactivated", f"@mole:{domain}") in kinds
    assert any(
        e == "sign-in, new device" and a == f"@mole:{domain}" for e, a in kinds
    )  # a deactivated account's history
    assert json.loads(invoke("audit", "--json", "--name", APPLIANCE).stdout)[0].keys() >= {"time", "event", "account"}


def test_audit_follows_new_events(day, loop, tmp_path, e2e):
    follower = subprocess.Popen(
        ["invoke", "audit", "--follow", "--json", "--name", APPLIANCE],
        cwd=REPO,
        env=e2e.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout], daemon=True).start()
    try:
        time.sleep(3)  # it has read the past and follows
        password = add_user("lark")
        device = clients.Device(day["facts"], "lark", tmp_path / "lark")
        loop.run(device.login(password, "lark's laptop"))
        loop.run(device.close())
        deadline = time.monotonic() + 120
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            event = json.loads(line) if line.strip() else {}
            if event.get("account", "").startswith("@lark:") and event["event"].startswith("sign-in"):
                assert event["device_name"] == "lark's laptop"
                break
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_bad_and_taken_account_names_are_refused(day):
    bad = invoke("user.add", "Not_Valid", "--name", APPLIANCE, check=False)
    assert bad.returncode == 2 and "invalid account name" in bad.stderr and "hint:" in bad.stderr
    taken = invoke("user.add", "fox", "--name", APPLIANCE, check=False)
    assert taken.returncode == 2 and "already exists" in taken.stderr


def test_turn_allocation_works_and_internal_relays_are_refused(day):
    result = invoke("turn-check", "--name", APPLIANCE, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "relayed address" in result.stdout
    # TURN over TLS, through nginx's stream module to coturn, with TLS 1.3 (issue 19)
    assert "allocation over TLS (TLSv1.3): relayed address" in result.stdout, result.stdout
    for peer in ("127.0.0.1", "10.0.0.1", "169.254.169.254"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{peer}\t"))
        assert "refused (403" in line, line


# The case record (issue 16): the recorder on the appliance has been a member of #control since
# control-room made it; everything above was said in front of it.


GAP = 14  # messages sent while the recorder is stopped: more than one sync returns


def png(width: int, height: int) -> bytes:
    """A real PNG (solid red), so the exported page's <img> must actually decode."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def send_encrypted_file(
    device: clients.Device, room: str, data: bytes, name: str, msgtype: str, mime: str
) -> str:
    import io

    uploaded, keys = await device.client.upload(
        io.BytesIO(data), content_type="application/octet-stream", filename=name, encrypt=True, filesize=len(data)
    )
    content = {
        "msgtype": msgtype,
        "body": name,
        "info": {"mimetype": mime, "size": len(data)},
        "file": {"url": uploaded.content_uri, **keys},
    }
    sent = await device.client.room_send(room, "m.room.message", content, ignore_unverified_devices=True)
    return sent.event_id


def record_lines(folder) -> list[dict]:
    path = folder / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def export_until(
    folder, wanted: set[str], late_line: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """`invoke case.export` (incremental) until the record holds every wanted event id (and, with
    late_line, a late decryption of that event)."""
    deadline = time.monotonic() + timeout
    while True:
        result = invoke("case.export", "--name", APPLIANCE, "--out", str(folder))
        lines = record_lines(folder)
        have = {x.get("event_id") for x in lines}
        late = {x.get("event_id") for x in lines if x.get("late")}
        if (wanted <= have and (late_line is None or late_line in late)) or time.monotonic() > deadline:
            assert wanted <= have, f"not recorded: {wanted - have}"
            assert late_line is None or late_line in late, f"never decrypted: {late_line}"
            return result
        time.sleep(3)


@pytest.fixture(scope="module")
def case_day(day, owl_first, loop, tmp_path_factory, journey_appliance):
    """Two nio clients (owl's laptop and the lead's phone) add what the browsers did not: an edit, a
    reaction, a redaction, an encrypted image and file; then the recorder is stopped while the lead
    sends GAP messages, and started again."""
    room = day["room_id"]
    lead_nio = clients.Device(day["facts"], "lead", tmp_path_factory.mktemp("lead-nio"))
    image, document = png(40, 30), b"%PDF-1.4 incident report\n" + bytes(range(256)) * 8
    ids: dict[str, str] = {}
    withheld: list = []  # the recorder's devices, left out of one Megolm session
    late_key: dict = {}  # that session's key, before its first message

    async def send(device: clients.Device, event_type: str, content: dict) -> str:
        sent = await device.client.room_send(room, event_type, content, ignore_unverified_devices=True)
        return sent.event_id

    async def scenario() -> None:
        await lead_nio.login(day["passwords"]["lead"], "lead phone (nio)")
        await clients.until(lambda: room in lead_nio.client.rooms, [lead_nio, owl_first])
        ids["text"] = await send(
            owl_first, "m.room.message", {"msgtype": "m.text", "body": "owl: host 10.1.2.3 is patient zero"}
        )
        ids["edit"] = await send(
            owl_first,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "* owl: host 10.1.2.4 is patient zero",
                "m.new_content": {"msgtype": "m.text", "body": "owl: host 10.1.2.4 is patient zero"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": ids["text"]},
            },
        )
        ids["reaction"] = await send(
            lead_nio, "m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": ids["text"], "key": "👍"}}
        )
        ids["doomed"] = await send(
            lead_nio, "m.room.message", {"msgtype": "m.text", "body": "lead: the VPN password is hunter2"}
        )
        ids["redaction"] = (await lead_nio.client.room_redact(room, ids["doomed"], reason="secret")).event_id
        ids["image"] = await send_encrypted_file(owl_first, room, image, "evidence.png", "m.image", "image/png")
        ids["file"] = await send_encrypted_file(lead_nio, room, document, "report.pdf", "m.file", "application/pdf")
        ids["before restart"] = await send(
            owl_first, "m.room.message", {"msgtype": "m.text", "body": "owl: before the restart"}
        )
        # A message whose key reaches the recorder only later: the lead's client leaves the recorder's
        # device out of one Megolm session (blacklisted for it), keeps the session's key as it was
        # before its first message, and sends it once the recorder has recorded the message as
        # undecryptable (late_key, below) — a delayed m.room_key, as a slow or offline sender makes.
        recorder_id = f"@{matrix.RECORDER_ACCOUNT}:{day['facts']['domain']}"
        store = lead_nio.client.device_store
        await clients.until(lambda: any(True for _ in store.active_user_devices(recorder_id)), [lead_nio])
        withheld[:] = list(store.active_user_devices(recorder_id))
        for device in withheld:
            lead_nio.client.blacklist_device(device)
        lead_nio.client.invalidate_outbound_session(room)  # nio keeps a session 100 messages: a new one
        await lead_nio.client.share_group_session(room, ignore_unverified_devices=True)
        session = lead_nio.client.olm.outbound_group_sessions[room]
        late_key.update(
            algorithm="m.megolm.v1.aes-sha2", room_id=room, session_id=session.id, session_key=session.session_key
        )
        ids["withheld"] = await send(lead_nio, "m.room.message", {"msgtype": "m.text", "body": "lead: withheld"})
        lead_nio.client.invalidate_outbound_session(room)  # …and the next one shared with the recorder again
        for device in withheld:
            lead_nio.client.unblacklist_device(device)

    async def send_late_key() -> None:
        # nio shares room keys only through its own sending path, so the delayed key is built the
        # way that path builds it: m.room_key, Olm-encrypted to each recorder device.
        olm = lead_nio.client.olm
        for device in withheld:
            encrypted = olm._olm_encrypt(olm.session_store.get(device.curve25519), device, "m.room_key", late_key)
            message = ToDeviceMessage("m.room.encrypted", device.user_id, device.id, encrypted)
            assert isinstance(await lead_nio.client.to_device(message), ToDeviceResponse)

    def recorder(action: str) -> None:
        done = ssh.command(journey_appliance, f"sudo systemctl {action} outband-recorder.service", timeout=120)
        assert done.returncode == 0, done.stderr

    async def while_away() -> None:
        # More than one sync returns (Synapse's default timeline: 10 events): the recorder must
        # read the gap back.
        for i in range(GAP):
            ids[f"gap {i}"] = await send(lead_nio, "m.room.message", {"msgtype": "m.text", "body": f"lead: gap {i}"})

    async def after_restart() -> None:
        ids["after restart"] = await send(
            lead_nio, "m.room.message", {"msgtype": "m.text", "body": "lead: after the restart"}
        )

    try:
        loop.run(scenario())
        recorder("stop")
        loop.run(while_away())
        recorder("start --no-block")  # the next message is sent while it starts again
        loop.run(after_restart())
        folder = tmp_path_factory.mktemp("case") / "export"
        export_until(folder, set(ids.values()))
        undecryptable = [x for x in record_lines(folder) if x.get("event_id") == ids["withheld"]]
        loop.run(send_late_key())
        exported = export_until(folder, set(), late_line=ids["withheld"])
    finally:
        loop.run(lead_nio.close())
    return {
        "ids": ids,
        "image": image,
        "document": document,
        "folder": folder,
        "exported": exported,
        "undecryptable": undecryptable,
    }


def test_the_case_record_holds_every_event_decrypted(case_day, day):
    ids, folder = case_day["ids"], case_day["folder"]
    lines = record_lines(folder)
    by_id = {x["event_id"]: x for x in lines if x.get("event_id") and not x.get("late")}
    # Nothing twice, the restart included (it resumed from its saved sync token).
    plain = [x["event_id"] for x in lines if x.get("event_id") and not x.get("late")]
    assert len(plain) == len(set(plain))
    text = by_id[ids["text"]]
    assert text["encrypted"] and text["content"]["body"] == "owl: host 10.1.2.3 is patient zero"
    assert text["raw"]["type"] == "m.room.encrypted" and "ciphertext" in text["raw"]["content"]
    assert text["sender"] == f"@owl:{day['facts']['domain']}" and text["device"]
    assert by_id[ids["edit"]]["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": ids["text"]}
    assert by_id[ids["reaction"]]["type"] == "m.reaction"
    # Redacted on the server, kept in the record, with the redaction after it.
    assert by_id[ids["doomed"]]["content"]["body"] == "lead: the VPN password is hunter2"
    assert by_id[ids["redaction"]]["type"] == "m.room.redaction"
    for key in ("before restart", "after restart"):
        assert by_id[ids[key]]["content"]["body"]
    # What was said while the recorder was stopped, read back: all of it, in order, once.
    gap = [x["content"]["body"] for x in lines if x.get("encrypted") and "gap" in x["content"].get("body", "")]
    assert gap == [f"lead: gap {i}" for i in range(GAP)]
    # What the browsers said earlier in the day, decrypted too (Hydrogen shared its keys with the recorder).
    bodies = {x["content"].get("body") for x in lines if x.get("content")}
    assert {"fox: containment started", "lead: rotate the VPN keys", "owl: ack, watching the logs"} <= bodies
    # The withheld message: first recorded as undecryptable, with its Megolm session and ciphertext…
    unread = [x for x in lines if x.get("undecryptable")]
    (withheld,) = case_day["undecryptable"]
    assert withheld["undecryptable"] and withheld["content"] is None
    assert withheld["session_id"] and withheld["raw"]["content"]["ciphertext"]
    # …then, once its key arrived, a later line decrypts it. Nothing else was left unread.
    late = [x for x in lines if x.get("late")]
    assert [(x["event_id"], x["content"]["body"]) for x in late] == [(ids["withheld"], "lead: withheld")]
    assert late[0]["seq"] > withheld["seq"] and late[0]["session_id"] == withheld["session_id"]
    assert [x["event_id"] for x in unread] == [ids["withheld"]], unread
    # Membership and power are in the record.
    kinds = {x["type"] for x in lines}
    assert {"m.room.member", "m.room.power_levels", "m.room.encryption", "m.room.create"} <= kinds
    # So is the day's access audit, from Synapse's log: sign-ins, failures, deactivations.
    domain = day["facts"]["domain"]
    access = {(x["content"]["event"], x["content"]["account"]) for x in lines if x["type"] == "outband.access"}
    assert ("sign-in, new device", f"@fox:{domain}") in access
    assert ("sign-in failed", f"@wren:{domain}") in access and ("deactivated", f"@mole:{domain}") in access


def test_the_case_records_media_are_byte_identical(case_day):
    ids, folder = case_day["ids"], case_day["folder"]
    by_id = {x["event_id"]: x for x in record_lines(folder) if x.get("event_id") and not x.get("late")}
    for key, sent in (("image", case_day["image"]), ("file", case_day["document"])):
        media = by_id[ids[key]]["media"]
        assert (folder / "media" / media["sha256"]).read_bytes() == sent
    # The file fox sent from the browser, earlier.
    browser_files = [x for x in record_lines(folder) if (x.get("content") or {}).get("body") == "timeline.bin"]
    assert browser_files and (folder / "media" / browser_files[0]["media"]["sha256"]).read_bytes() == BROWSER_FILE


def test_the_exported_case_renders_in_a_browser(case_day, browsers, loop):
    folder = case_day["folder"]
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in folder.rglob("*") if f.is_file())

    async def look() -> tuple[str, int]:
        page = await browsers.browser.new_page()
        try:
            await page.goto(f"file://{folder / 'index.html'}")
            await page.get_by_role("link", name="control").click()
            await page.get_by_text("evidence.png").first.wait_for()
            width = await page.eval_on_selector("img.media", "img => img.naturalWidth")
            (REPORTS / "case").mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(REPORTS / "case" / "control.png"), full_page=True)
            return await page.inner_text("body"), width
        finally:
            await page.close()

    text, width = loop.run(look())
    assert width == 40  # the decrypted image, decoded
    assert "owl: host 10.1.2.3 is patient zero" in text and "edited" in text and "host 10.1.2.4" in text
    assert "lead: the VPN password is hunter2" in text and "redacted by @lead:" in text
    assert "reactions: 👍" in text and "report.pdf" in text
    assert "decrypted later" in text  # the withheld message, once its key came


def test_case_verify_passes_the_export_and_names_tampering(case_day, tmp_path):
    import shutil

    ok = invoke("case.verify", str(case_day["folder"]))
    assert "chain intact" in ok.stderr + ok.stdout
    copy = tmp_path / "tampered"
    shutil.copytree(case_day["folder"], copy)
    lines = (copy / "events.jsonl").read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"seq":5', b'"seq":5 ')
    (copy / "events.jsonl").write_bytes(b"".join(lines))
    bad = invoke("case.verify", str(copy), check=False)
    assert bad.returncode == 4 and "line 5 was changed" in bad.stdout


def test_destroy_refuses_an_unexported_record(case_day, day, owl_first, loop, journey_appliance):
    from appliance import case

    exported = len(record_lines(case_day["folder"]))
    loop.run(owl_first.send(day["room_id"], "owl: said after the export"))
    deadline = time.monotonic() + 120
    while (case.remote_manifest(journey_appliance) or {"manifest": {"events": 0}})["manifest"]["events"] <= exported:
        assert time.monotonic() < deadline, "the recorder did not record the message"
        time.sleep(2)
    refused = invoke("destroy", "--name", APPLIANCE, "--yes", check=False)
    assert refused.returncode == 2, refused.stderr
    assert "not yet" in refused.stderr or "no export has taken" in refused.stderr
    assert "invoke case.export --name e2e-a" in refused.stderr and "--discard-record" in refused.stderr
    assert APPLIANCE in invoke("ls").stdout  # still there
    # A second export takes just what is new.
    again = invoke("case.export", "--name", APPLIANCE, "--out", str(case_day["folder"]))
    assert re.search(r"exported [1-9]\d* new events", again.stdout + again.stderr)
