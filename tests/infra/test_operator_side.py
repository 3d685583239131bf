"""Checks from the operator's side: what clients and federating servers see."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
import signedjson.key
import signedjson.sign

from appliance import https, turncheck
from tests.infra.federation import keys_fetched_by


def test_client_api_on_443(get, domain):
    r = get(f"matrix.{domain}", "/_matrix/client/versions")
    assert r.status == 200
    assert "v1.1" in r.json()["versions"]


def test_federation_version_on_8448(get, domain):
    r = get(f"matrix.{domain}", "/_matrix/federation/v1/version", port=8448)
    assert r.status == 200
    assert r.json()["server"]["name"] == "Synapse"


def federation_request(facts: dict, domain: str, origin: str) -> https.Response:
    """A federation query as server `origin` would send it, with a signature that cannot verify."""
    auth = f'X-Matrix origin="{origin}",destination="{domain}",key="ed25519:a_test",sig="{"A" * 86}"'
    return https.request(
        facts["address"],
        8448,
        f"matrix.{domain}",
        f"/_matrix/federation/v1/query/profile?user_id=%40nobody%3A{domain}",
        facts["acme_root"],
        headers={"Authorization": auth},
        timeout=60,
    )


def test_federation_is_with_the_team_only(facts, domain, federation):
    """Issue 18: a server outside the team is refused before its signature is even looked at
    (Synapse's federation_domain_whitelist: 403 "Federation denied"); a team member's request gets
    past the list to the signature check (here 401: the signature is made up). With
    --open-federation nobody is refused by the list."""
    assert domain in federation["servers"]
    outsider = federation_request(facts, domain, "outsider.invalid")
    denied = outsider.status == 403 and "Federation denied" in outsider.json().get("error", "")
    assert denied is not federation["open"], (outsider.status, outsider.body[:200])
    member = federation_request(facts, domain, ([s for s in federation["servers"] if s != domain] or [domain])[0])
    assert member.status == 401, (member.status, member.body[:200])


def test_each_team_server_is_reached_over_federation(facts, domain, federation):
    """Issue 18: the federation tester's checks, from this appliance outwards: it reaches every
    other server of its team (their keys, signed by them). A server outside the team is refused
    by the whitelist: tests/e2e/test_team.py shows it with a reachable one."""
    others = [s for s in federation["servers"] if s != domain]
    if not others:
        pytest.skip("no team: this appliance federates with nobody else")
    for server in others:
        keys = keys_fetched_by(facts, server)
        assert keys, f"{domain} could not fetch {server}'s signing keys over federation"
        assert server in keys[0]["signatures"], keys[0]
        assert keys[0]["valid_until_ts"] > time.time() * 1000


def test_key_server_serves_the_injected_signing_key(get, domain, facts):
    """The federation tester's checks: MatchingServerName, FutureValidUntilTS, HasEd25519Key, AllEd25519ChecksOK."""
    r = get(f"matrix.{domain}", "/_matrix/key/v2/server", port=8448)
    assert r.status == 200
    keys = r.json()
    assert keys["server_name"] == domain
    assert keys["valid_until_ts"] > time.time() * 1000
    assert list(keys["verify_keys"]) == [facts["signing_key_id"]]
    served = keys["verify_keys"][facts["signing_key_id"]]["key"]
    assert served == facts["signing_public_key"]
    verify_key = signedjson.key.decode_verify_key_base64("ed25519", facts["signing_key_id"].split(":")[1], served)
    signedjson.sign.verify_signed_json(keys, domain, verify_key)  # raises if the signature is bad


def test_certificate_covers_every_name_and_chains_to_the_acme_root(facts, domain):
    for name in facts["names"]:
        peer = https.peer_certificate(facts["address"], 443, name, facts["acme_root"])  # verifies chain + name
        sans = {value for kind, value in peer["cert"]["subjectAltName"] if kind == "DNS"}
        assert sans == {domain, f"matrix.{domain}", f"element.{domain}", f"riot.{domain}"}
    peer = https.peer_certificate(facts["address"], 8448, f"matrix.{domain}", facts["acme_root"])
    assert peer["cert"]["subjectAltName"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_tls_is_served(get, domain, version, facts):
    r = https.request(
        facts["address"], 443, f"matrix.{domain}", "/_matrix/client/versions", facts["acme_root"], tls_version=version
    )
    assert r.status == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # offered on purpose
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_is_refused(facts, domain, version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(facts["acme_root"])
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old version at all
        ctx.minimum_version = ctx.maximum_version = version
    except (ValueError, ssl.SSLError) as e:
        pytest.skip(f"this client's OpenSSL cannot offer {version.name}: {e}")
    with socket.create_connection((facts["address"], 443), timeout=10) as sock, pytest.raises(ssl.SSLError) as err:
        ctx.wrap_socket(sock, server_hostname=f"matrix.{domain}")
    if "NO_PROTOCOLS_AVAILABLE" in str(err.value) or "NO_CIPHERS" in str(err.value):
        pytest.skip(f"this client's OpenSSL refused to offer {version.name}")
    assert "VERSION" in str(err.value).upper() or "HANDSHAKE" in str(err.value).upper()


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/register",
        "/_matrix/client/r0/register",
        "/_matrix/client/v3/register?kind=guest",
    ],
)
def test_registration_is_refused(get, domain, path):
    r = get(
        f"matrix.{domain}",
        path,
        method="POST",
        body={"username": "intruder", "password": "correct horse battery staple", "auth": {"type": "m.login.dummy"}},
    )
    assert r.status == 403
    assert r.json()["errcode"] == "M_FORBIDDEN"


def test_well_known(get, domain):
    server = get(domain, "/.well-known/matrix/server")
    assert server.status == 200
    assert server.json() == {"m.server": f"matrix.{domain}:8448"}
    client = get(domain, "/.well-known/matrix/client")
    assert client.status == 200
    assert client.json()["m.homeserver"]["base_url"] == f"https://matrix.{domain}"
    assert client.headers.get("access-control-allow-origin") == "*"


@pytest.mark.parametrize("sub", ["element", "riot"])
def test_web_client_points_at_this_homeserver(get, domain, sub):
    index = get(f"{sub}.{domain}", "/")
    assert index.status == 200
    assert b"<script" in index.body
    config = get(f"{sub}.{domain}", "/config.json").json()
    assert config["default_server_config"]["m.homeserver"]["base_url"] == f"https://matrix.{domain}"
    assert config["default_server_config"]["m.homeserver"]["server_name"] == domain
    assert config["defaultHomeServer"] == domain  # Hydrogen's key
    assert config["disable_custom_urls"] is True
    assert config["disable_guests"] is True
    assert "strict-transport-security" in index.headers


@pytest.mark.parametrize("port", [443, 8448])
def test_admin_api_is_not_reachable_from_outside(get, domain, port):
    r = get(f"matrix.{domain}", "/_synapse/admin/v1/server_version", port=port)
    assert r.status == 404


def test_plain_http_only_redirects(facts, domain):
    import urllib3

    pool = urllib3.HTTPConnectionPool(facts["address"], 80, retries=False, timeout=10)
    r = pool.request("GET", "/_matrix/client/versions", headers={"Host": f"matrix.{domain}"}, redirect=False)
    assert r.status == 301
    assert r.headers["location"] == f"https://matrix.{domain}/_matrix/client/versions"


def _stun_binding(address: str, port: int) -> bytes:
    """A STUN binding request (RFC 5389) over UDP; returns the response's message type."""
    transaction = b"outband-test"
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(request, (address, port))
        data, _ = sock.recvfrom(2048)
    assert data[8:20] == transaction
    return data[:2]


def test_turn_answers_stun_on_udp_3478(facts):
    assert _stun_binding(facts["address"], 3478) == b"\x01\x01"  # binding success response


@pytest.mark.parametrize("port", [3478, 5349])
def test_turn_accepts_tcp(facts, port):
    with socket.create_connection((facts["address"], port), timeout=10):
        pass


def test_turns_speaks_tls_with_the_appliance_certificate(facts, domain):
    peer = https.peer_certificate(facts["address"], 5349, f"matrix.{domain}", facts["acme_root"])
    assert peer["version"] in ("TLSv1.2", "TLSv1.3")


def test_turn_over_tls_allocates_behind_the_handshake(facts, domain):
    """5349 is nginx's TLS in front of coturn: a handshake alone would pass with coturn down. A real
    allocation over TLS 1.3 proves the whole path. The credentials are made from the launch's TURN
    secret the way Synapse makes them (TURN REST: "expiry:user", HMAC-SHA1 of it, base64)."""
    secret = json.loads(Path(facts["secrets_file"]).read_text())["turn"]
    username = f"{int(time.time()) + 600}:outband-verify"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    allocation = asyncio.run(
        asyncio.wait_for(
            turncheck.allocate_over_tls(
                (facts["address"], 5349), f"matrix.{domain}", facts["acme_root"], username, password
            ),
            timeout=60,
        )
    )
    assert allocation.version == "TLSv1.3"
    assert allocation.relayed.rsplit(":", 1)[1].isdigit()
