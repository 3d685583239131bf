"""The DigitalOcean target against a FAKE DigitalOcean API (tests/fakes), through the real pydo client.

The fake is the one boundary we cannot reach from here; the appliance's health check (which needs
a real droplet) is replaced by a recorder, named as such below.
"""

from __future__ import annotations

import json

import pytest
import yaml

from appliance import config
from appliance.doapi import DoApi, DoError
from appliance.errors import OutbandError
from appliance.targets import LaunchSpec
from appliance.targets.digitalocean import DigitalOceanTarget, firewall_rules, record_name
from tests.conftest import REPO
from tests.fakes.digitalocean import TOKEN, FakeDigitalOcean

DOMAIN = "chat.example.org"
OPERATOR = "198.51.100.7/32"


@pytest.fixture
def fake(tmp_path):
    with FakeDigitalOcean(tmp_path) as api:
        api.add_snapshot("outband-trixie-0123456789ab", "2026-11-20T10:00:00Z")
        yield api


@pytest.fixture
def settings(tmp_path, fake):
    raw = yaml.safe_load((REPO / "invoke.yaml").read_text())["outband"]
    raw["dirs"] = {"cache": str(tmp_path / "cache"), "state": str(tmp_path / "state"), "output": str(tmp_path)}
    raw["digitalocean"].update(
        dns_zone="example.org",
        operator_cidr=OPERATOR,
        api_url=fake.endpoint,
        ca_bundle=str(fake.ca_file),
        active_timeout=5,
    )
    return config.load(raw, target="digitalocean")


@pytest.fixture
def healthy_calls():
    return []


@pytest.fixture
def target(settings, fake, healthy_calls):
    api = DoApi(TOKEN, fake.endpoint, str(fake.ca_file), attempts=3, backoff=0.01)
    # No droplet really boots behind the fake API: record the health wait instead of running it.
    return DigitalOceanTarget(settings, api=api, health=healthy_calls.append, poll_interval=0.01)


def spec(name: str = "alpha") -> LaunchSpec:
    return LaunchSpec(name=name, domain=DOMAIN, image=None, contact_email="ops@example.org")


def nothing_left(fake: FakeDigitalOcean) -> bool:
    s = fake.state
    return not s.droplets and not s.firewalls and not any(s.records.values()) and not s.keys


def test_launch_sends_exactly_the_resources_the_design_names(target, fake, healthy_calls):
    record = target.launch(spec())
    tag = "outband-alpha"
    (key_body,) = fake.bodies("POST", "/v2/account/keys")
    operator_pub = record.path("operator_ed25519.pub").read_text().strip()
    assert key_body == {"name": tag, "public_key": operator_pub}

    (droplet,) = fake.bodies("POST", "/v2/droplets")
    assert droplet["image"] == int(next(iter(fake.state.snapshots)))
    assert droplet["tags"] == [tag]
    assert droplet["ssh_keys"] == [record.data["ssh_key_id"]]
    assert (droplet["region"], droplet["size"]) == ("fra1", "s-1vcpu-2gb")
    user_data = yaml.safe_load(droplet["user_data"])
    assert droplet["user_data"].startswith("#cloud-config\n")
    contract = json.loads(user_data["write_files"][0]["content"])
    assert contract["domain"] == DOMAIN
    assert contract["acme"] == {"directory": "https://acme-v02.api.letsencrypt.org/directory", "ca_pem": None}
    assert contract["secrets"] == json.loads(record.path("secrets.json").read_text())
    assert user_data["ssh_authorized_keys"] == [operator_pub]

    (firewall,) = fake.bodies("POST", "/v2/firewalls")
    assert firewall["tags"] == [tag]
    ssh_rules = [r for r in firewall["inbound_rules"] if r.get("ports") == "22"]
    assert ssh_rules == [{"protocol": "tcp", "ports": "22", "sources": {"addresses": [OPERATOR]}}]
    public = {
        (r["protocol"], r.get("ports"))
        for r in firewall["inbound_rules"]
        if r["sources"]["addresses"] == ["0.0.0.0/0", "::/0"]
    }
    assert public == {
        ("tcp", "80"),
        ("tcp", "443"),
        ("tcp", "8448"),
        ("tcp", "3478"),
        ("tcp", "5349"),
        ("udp", "3478"),
        ("udp", "5349"),
        ("udp", "49152-49171"),
        ("icmp", None),
    }

    records = fake.bodies("POST", "/v2/domains/example.org/records")
    address = record.data["address"]
    assert address.startswith("203.0.113.")
    assert records == [
        {"type": "A", "name": n, "data": address, "ttl": 300}
        for n in ("chat", "matrix.chat", "element.chat", "riot.chat")
    ]
    assert [r.name for r in healthy_calls] == ["alpha"]
    facts = json.loads(record.path("facts.json").read_text())
    assert facts["address"] == address and facts["target"] == "digitalocean"
    ssh_config = record.path("ssh_config").read_text()
    assert f"HostName {address}" in ssh_config and "Port 22" in ssh_config


def test_destroy_removes_everything_and_is_idempotent(target, fake):
    record = target.launch(spec())
    assert not nothing_left(fake)
    target.destroy(record)
    assert nothing_left(fake)
    assert not record.dir.exists()
    target.destroy(record)  # again: 404s are fine
    assert nothing_left(fake)


def test_a_429_is_retried(target, fake):
    fake.fail("POST", "/v2/droplets", 429, times=1)
    target.launch(spec())
    assert len(fake.state.droplets) == 1


@pytest.mark.parametrize(
    ("method", "path", "step"),
    [
        ("POST", "/v2/firewalls", "Create the cloud firewall"),
        ("POST", "/v2/droplets", "Create the droplet"),
        ("POST", "/v2/domains/example.org/records", "Create the DNS records"),
    ],
)
def test_a_failing_create_rolls_back_and_names_the_step(target, fake, settings, method, path, step):
    fake.fail(method, path, 500, times=50)
    with pytest.raises(OutbandError) as err:
        target.launch(spec())
    assert step in err.value.message
    assert nothing_left(fake)
    assert not (settings.dirs.state / "appliances/alpha").exists()


def test_a_create_failing_midway_through_dns_removes_the_records_already_made(target, fake):
    target.launch(spec("first"))  # two records succeed for the next launch, then the API fails
    fake.state.failures.clear()
    made_before = sum(len(z) for z in fake.state.records.values())

    calls = {"n": 0}
    original = fake.route

    def route(method, path, query, body):
        if method == "POST" and path.endswith("/records"):
            calls["n"] += 1
            if calls["n"] == 3:
                return 422, {"id": "unprocessable_entity", "message": "injected"}
        return original(method, path, query, body)

    fake.route = route
    with pytest.raises(OutbandError, match="Create the DNS records"):
        target.launch(spec("second"))
    assert sum(len(z) for z in fake.state.records.values()) == made_before
    assert len(fake.state.droplets) == 1  # only the first appliance's


def test_a_droplet_that_never_becomes_active_times_out_and_is_removed(target, fake, settings):
    fake.state.polls_until_active = -1
    import dataclasses

    target.s = dataclasses.replace(settings, do=dataclasses.replace(settings.do, active_timeout=0.3))
    with pytest.raises(OutbandError, match="still 'new'"):
        target.launch(spec())
    assert nothing_left(fake)


def test_leftovers_are_detected_and_the_state_is_kept(target, fake):
    record = target.launch(spec())
    fake.state.sticky.add("droplet")  # the delete is accepted, the droplet stays
    with pytest.raises(OutbandError, match="still there: droplet"):
        target.destroy(record)
    assert record.dir.exists()
    fake.state.sticky.clear()
    target.destroy(record)
    assert nothing_left(fake)


def test_errors_returned_as_data_become_one_error(target, fake):
    with pytest.raises(DoError, match="not_found"):
        target.api.call("get droplet", target.api.client.droplets.get, 424242)
    assert target.api.call("get droplet", target.api.client.droplets.get, 424242, missing_ok=True) is None


def test_pagination_and_snapshot_pruning(target, fake):
    for i in range(204):
        fake.add_snapshot(f"outband-trixie-{i:012x}", f"2026-11-21T{i // 60:02d}:{i % 60:02d}:00Z")
    fake.add_snapshot("someone-elses", "2026-11-22T00:00:00Z")
    snaps = target.snapshots()
    assert len(snaps) == 205  # two pages of 200
    deleted = target.prune_snapshots(keep=3)
    assert len(deleted) == 202
    assert [s["name"] for s in target.snapshots()] == [s["name"] for s in snaps[-3:]]
    assert any(s["name"] == "someone-elses" for s in fake.state.snapshots.values())


def test_bad_input_creates_nothing(target, fake, settings):
    with pytest.raises(OutbandError, match="not inside the DigitalOcean DNS zone"):
        target.launch(LaunchSpec(name="alpha", domain="chat.elsewhere.net", image=None, contact_email="a@b.org"))
    assert fake.state.requests == []
    assert not (settings.dirs.state / "appliances/alpha").exists()


def test_a_missing_token_is_a_clear_error(settings, monkeypatch):
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    with pytest.raises(OutbandError, match="DIGITALOCEAN_TOKEN is not set"):
        DigitalOceanTarget(settings).api  # noqa: B018


def test_pure_helpers():
    assert record_name("example.org", "example.org") == "@"
    assert record_name("matrix.chat.example.org", "example.org") == "matrix.chat"
    inbound, outbound = firewall_rules("192.0.2.1/32")
    assert inbound[0]["sources"]["addresses"] == ["192.0.2.1/32"]
    assert {r["protocol"] for r in outbound} == {"tcp", "udp", "icmp"}


def test_ipv6_adds_aaaa_records(target, fake, settings):
    import dataclasses

    target.s = dataclasses.replace(settings, do=dataclasses.replace(settings.do, ipv6=True))
    record = target.launch(spec())
    assert fake.bodies("POST", "/v2/droplets")[0]["ipv6"] is True
    records = fake.bodies("POST", "/v2/domains/example.org/records")
    aaaa = [r for r in records if r["type"] == "AAAA"]
    assert [r["name"] for r in aaaa] == ["chat", "matrix.chat", "element.chat", "riot.chat"]
    assert {r["data"] for r in aaaa} == {record.data["address_v6"]}
    target.destroy(record)
    assert nothing_left(fake)
