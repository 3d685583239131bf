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
from nio import RoomEncryptedFile, RoomInviteResponse, RoomKickResponse
from nio.crypto.attachments import decrypt_attachment

from appliance import matrix
from tests.conftest import REPO
from tests.e2e import clients
from tests.e2e.browser import Browsers, Loop, trusting_home
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
def loop():
    loop = Loop()
    yield loop
    loop.close()


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


def test_a_file_from_the_browser_arrives_byte_identical(day, fox, owl_first, loop, tmp_path):
    payload = b"incident timeline\n" + bytes(range(256)) * 40
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
    for peer in ("127.0.0.1", "10.0.0.1", "169.254.169.254"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{peer}\t"))
        assert "refused (403" in line, line
