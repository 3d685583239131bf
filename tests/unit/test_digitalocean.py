"""The DigitalOcean target against the SIMULATED DigitalOcean API (tests/sim/api.py), through the
real pydo client, with no VM behind it: droplets go through DigitalOcean's states without booting.

Every request is checked against DigitalOcean's own API description (`sim.state.invalid` must stay
empty). The appliance's health check needs a booted droplet, so here it is replaced by a recorder,
named as such; tests/e2e/test_digitalocean_sim.py runs the real one against a booted snapshot.
Each "defect N" test is one of the ten the simulator issue lists.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from appliance import config
from appliance.doapi import DoApi, DoError, retry_delay
from appliance.errors import ExitStatus, OutbandError
from appliance.targets import LaunchSpec
from appliance.targets.digitalocean import DigitalOceanTarget, firewall_rules, record_name
from appliance.wait import Clock
from tests.conftest import REPO
from tests.sim.api import TOKEN, Simulator, Timing

DOMAIN = "chat.example.org"
OPERATOR = "198.51.100.7/32"
FAST = Timing(
    active_after=0.05,
    networks_after=0.15,
    archive_for=0.3,
    firewall_waiting_for=0.05,
    dns_propagation=0.05,
    action_takes=0.01,
)


class RecordingClock(Clock):
    """A clock that records every wait instead of sleeping (time still passes for the simulator)."""

    def __init__(self) -> None:
        import time

        self.waits: list[float] = []
        super().__init__(now=time.monotonic, sleep=lambda s: (self.waits.append(s), time.sleep(min(s, 0.02))))


@pytest.fixture
def sim(tmp_path):
    with Simulator(tmp_path, timing=dataclasses.replace(FAST)) as api:
        api.add_snapshot("outband-trixie-0123456789ab", "2026-11-20T10:00:00Z", regions=("fra1", "ams3"))
        yield api
    assert api.state.invalid == [], "requests DigitalOcean's API description does not allow"


@pytest.fixture
def settings(tmp_path, sim):
    raw = yaml.safe_load((REPO / "invoke.yaml").read_text())["outband"]
    raw["dirs"] = {"cache": str(tmp_path / "cache"), "state": str(tmp_path / "state"), "output": str(tmp_path)}
    raw["digitalocean"].update(
        dns_zone="example.org",
        operator_cidr=OPERATOR,
        api_url=sim.endpoint,
        ca_bundle=str(sim.ca_file),
        active_timeout=5,
    )
    return config.load(raw, target="digitalocean")


@pytest.fixture
def clock():
    return RecordingClock()


@pytest.fixture
def healthy_calls():
    return []


def make_target(settings, sim, healthy_calls, clock) -> DigitalOceanTarget:
    api = DoApi(TOKEN, sim.endpoint, str(sim.ca_file), attempts=4, backoff=0.01, clock=clock)
    # RECORDER in place of the health check: no droplet boots behind the simulator here.
    return DigitalOceanTarget(settings, api=api, health=healthy_calls.append, poll_interval=0.02, clock=clock)


@pytest.fixture
def target(settings, sim, healthy_calls, clock):
    return make_target(settings, sim, healthy_calls, clock)


def spec(name: str = "alpha", domain: str = DOMAIN) -> LaunchSpec:
    return LaunchSpec(name=name, domain=domain, image=None, contact_email="ops@example.org")


def test_launch_sends_exactly_the_resources_the_design_names(target, sim, healthy_calls):
    record = target.launch(spec())
    tag = "outband-alpha"
    (key_body,) = sim.bodies("POST", "/v2/account/keys")
    operator_pub = record.path("operator_ed25519.pub").read_text().strip()
    assert key_body == {"name": tag, "public_key": operator_pub}

    (droplet,) = sim.bodies("POST", "/v2/droplets")
    assert droplet["tags"] == [tag] and droplet["ssh_keys"] == [record.data["ssh_key_id"]]
    assert (droplet["region"], droplet["size"]) == ("fra1", "s-1vcpu-2gb")
    user_data = yaml.safe_load(droplet["user_data"])
    contract = json.loads(user_data["write_files"][0]["content"])
    assert contract["domain"] == DOMAIN
    assert contract["acme"]["directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert contract["secrets"] == json.loads(record.path("secrets.json").read_text())
    assert user_data["ssh_authorized_keys"] == [operator_pub]

    (firewall,) = sim.bodies("POST", "/v2/firewalls")
    assert firewall["tags"] == [tag]
    ssh_rules = [r for r in firewall["inbound_rules"] if r.get("ports") == "22"]
    assert ssh_rules == [{"protocol": "tcp", "ports": "22", "sources": {"addresses": [OPERATOR]}}]
    public = {
        (r["protocol"], r.get("ports")) for r in firewall["inbound_rules"] if "0.0.0.0/0" in r["sources"]["addresses"]
    }
    assert public == {
        ("tcp", "80"),
        ("tcp", "443"),
        ("tcp", "8448"),
        ("tcp", "3478"),
        ("tcp", "5349"),
        ("udp", "3478"),
        ("udp", "49152-49171"),
        ("icmp", None),
    }
    records = sim.bodies("POST", "/v2/domains/example.org/records")
    address = record.data["address"]
    assert records == [
        {"type": "A", "name": n, "data": address, "ttl": 300}
        for n in ("chat", "matrix.chat", "element.chat", "riot.chat")
    ]
    assert [r.name for r in healthy_calls] == ["alpha"]
    facts = json.loads(record.path("facts.json").read_text())
    assert facts["address"] == address and facts["target"] == "digitalocean"
    assert "Port 22" in record.path("ssh_config").read_text()


def test_defect2_staging_needs_its_roots_and_then_trusts_them_end_to_end(target, sim, settings, tmp_path):
    target.s = dataclasses.replace(settings, acme_staging=True)
    with pytest.raises(OutbandError, match="staging roots") as err:
        target.launch(spec())
    assert err.value.status == ExitStatus.USAGE and sim.state.requests == []
    roots = tmp_path / "staging-roots.pem"
    roots.write_text("-----BEGIN CERTIFICATE-----\n(staging roots)\n-----END CERTIFICATE-----\n")
    target.s = dataclasses.replace(settings, acme_staging=True, acme_roots=str(roots))
    record = target.launch(spec())
    contract = json.loads(
        yaml.safe_load(sim.bodies("POST", "/v2/droplets")[0]["user_data"])["write_files"][0]["content"]
    )
    assert contract["acme"]["directory"] == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert json.loads(record.path("facts.json").read_text())["acme_root"] == str(roots)  # what verify trusts


def test_defect3_first_boot_is_told_to_wait_for_dns(target, sim):
    """Records are made once the droplet has an address: the appliance must not ask for a
    certificate before its names resolve (first boot's side: tests/unit/test_firstboot_dns.py)."""
    target.launch(spec())
    contract = json.loads(
        yaml.safe_load(sim.bodies("POST", "/v2/droplets")[0]["user_data"])["write_files"][0]["content"]
    )
    assert contract["acme"]["await_dns"] is True


def test_defect4_an_active_droplet_without_an_address_is_waited_for(target, sim):
    sim.timing.networks_after = 0.4  # `active` well before networks.v4 is filled
    record = target.launch(spec())
    assert record.data["address"].startswith("203.0.113.")
    gets = [q for m, p, q, _ in sim.state.requests if m == "GET" and p.startswith("/v2/droplets/")]
    assert len(gets) > 2  # it asked again after seeing `active` with no address


def test_defect5_destroy_waits_for_archive_then_gone_and_converges(target, sim):
    record = target.launch(spec())
    droplet_id = record.data["droplet_id"]
    target.destroy(record)
    assert not record.dir.exists()
    assert droplet_id not in sim.state.droplets  # gone, not `archive`
    assert sim.resources_left() == []
    target.destroy(record)  # again: nothing to do, no error


def test_defect5_what_the_tag_search_finds_is_deleted(target, sim):
    record = target.launch(spec())
    # A second droplet with the appliance's tag that the record does not know (e.g. made by a
    # create whose answer was lost): destroy finds it by the tag and deletes it too.
    body = dict(sim.bodies("POST", "/v2/droplets")[0])
    sim.handle("POST", "/v2/droplets", {}, body)
    target.destroy(record)
    assert sim.resources_left() == []


def test_defect5_a_failing_cleanup_does_not_hide_the_launch_s_cause(target, sim):
    sim.fail("POST", "/v2/firewalls", 422, times=1)  # the launch fails here…
    sim.state.sticky.add("droplet")  # …and its droplet refuses to go
    target.gone_timeout = 0.5
    with pytest.raises(OutbandError) as err:
        target.launch(spec())
    assert "Create the cloud firewall" in err.value.message and "422" in err.value.message


def test_defect6_a_create_that_happened_before_a_5xx_is_found_not_repeated(target, sim):
    sim.fail("POST", "/v2/droplets", 500, after=True)
    sim.fail("POST", "/v2/domains/example.org/records", 503, after=True)
    record = target.launch(spec())
    assert sim.count("POST", "/v2/droplets") == 1  # never sent twice
    assert len(sim.state.droplets) == 1 and record.data["droplet_id"] in sim.state.droplets  # and tracked
    names = [r["name"] for r in sim.state.domains["example.org"].values()]
    assert sorted(names) == sorted({"chat", "matrix.chat", "element.chat", "riot.chat"})  # no duplicate
    target.destroy(record)
    assert sim.resources_left() == []


def test_defect6_a_create_that_did_not_happen_is_made_once_more(target, sim):
    sim.fail("POST", "/v2/firewalls", 502)  # answered 502 without making it
    record = target.launch(spec())
    assert sim.count("POST", "/v2/firewalls") == 2
    assert len([f for f in sim.state.firewalls.values() if f["name"] == "outband-alpha"]) == 1
    target.destroy(record)


def test_defect9_the_hourly_rate_limit_is_waited_out(target, sim, clock):
    sim.fail("GET", r"/v2/snapshots", 429, ratelimit_reset_in=3)
    target.launch(spec())
    assert clock.waits and max(clock.waits) >= 3  # until ratelimit-reset, not a few quick retries


def test_retry_delay_reads_the_servers_word():
    assert retry_delay(429, {"Retry-After": "7"}, 1, 1.0, now=0) == 7
    assert retry_delay(429, {"ratelimit-reset": "1100"}, 1, 1.0, now=1000) == 101
    assert retry_delay(503, {}, 3, 0.5, now=0) == 2.0


def test_a_create_is_never_retried_blindly_by_the_client(target, sim):
    sim.fail("POST", "/v2/account/keys", 500, times=10)
    with pytest.raises(OutbandError, match="upload SSH key"):
        target.launch(spec())
    assert sim.count("POST", "/v2/account/keys") == 3  # our three tries, each after a look-up; no hidden ones


def test_defect10_existing_records_for_the_names_are_refused(target, sim, settings):
    sim.handle(
        "POST", "/v2/domains/example.org/records", {}, {"type": "CNAME", "name": "matrix.chat", "data": "x.example."}
    )
    with pytest.raises(OutbandError, match="already has records") as err:
        target.launch(spec())
    assert err.value.status == ExitStatus.USAGE
    assert sim.count("POST", "/v2/droplets") == 0 and not (settings.dirs.state / "appliances/alpha").exists()


def test_defect10_a_snapshot_in_another_region_is_refused(target, sim, settings):
    target.s = dataclasses.replace(settings, do=dataclasses.replace(settings.do, region="nyc3"))
    with pytest.raises(OutbandError, match="not in region nyc3") as err:
        target.launch(spec())
    assert err.value.status == ExitStatus.USAGE and sim.count("POST", "/v2/droplets") == 0


def test_defect10_a_foreign_firewall_without_tags_does_not_break_destroy(target, sim):
    sim.add_foreign_firewall()  # listed with "tags": null
    record = target.launch(spec())
    target.destroy(record)
    assert sim.resources_left() == []


@pytest.mark.parametrize(
    ("method", "path", "step"),
    [
        ("POST", "/v2/firewalls", "Create the cloud firewall"),
        ("POST", "/v2/droplets", "Create the droplet"),
        ("POST", "/v2/domains/example.org/records", "Create the DNS records"),
    ],
)
def test_a_refused_create_rolls_back_and_names_the_step(target, sim, settings, method, path, step):
    sim.fail(method, path, 422, times=50)
    with pytest.raises(OutbandError) as err:
        target.launch(spec())
    assert step in err.value.message
    assert sim.resources_left() == []
    assert not (settings.dirs.state / "appliances/alpha").exists()


def test_a_droplet_that_never_becomes_active_times_out_and_is_removed(target, sim, settings):
    sim.state.never_active = True
    target.s = dataclasses.replace(settings, do=dataclasses.replace(settings.do, active_timeout=0.3))
    with pytest.raises(OutbandError, match="to be active with a public address"):
        target.launch(spec())
    assert sim.resources_left() == []


def test_leftovers_are_detected_and_the_state_is_kept(target, sim):
    record = target.launch(spec())
    sim.state.sticky.add("firewall")  # the delete is accepted, the firewall stays
    with pytest.raises(OutbandError, match="still there: firewall"):
        target.destroy(record)
    assert record.dir.exists()
    sim.state.sticky.clear()
    target.destroy(record)
    assert sim.resources_left() == []


def test_errors_returned_as_data_become_one_error(target):
    with pytest.raises(DoError, match="not_found"):
        target.api.call("get droplet", target.api.client.droplets.get, 424242)
    assert target.api.call("get droplet", target.api.client.droplets.get, 424242, missing_ok=True) is None


def test_pagination_and_snapshot_pruning(target, sim):
    for i in range(204):
        sim.add_snapshot(f"outband-trixie-{i:012x}", f"2026-11-21T{i // 60:02d}:{i % 60:02d}:00Z")
    sim.add_snapshot("someone-elses", "2026-11-22T00:00:00Z")
    snaps = target.images()
    assert len(snaps) == 205  # two pages of 200
    deleted = target.prune_images(keep=3)
    assert len(deleted) == 202
    assert [s.name for s in target.images()] == [s.name for s in snaps[-3:]]
    assert any(s["name"] == "someone-elses" for s in sim.state.images.values())


def test_bad_input_creates_nothing(target, sim, settings):
    with pytest.raises(OutbandError, match="not inside the DigitalOcean DNS zone"):
        target.launch(spec(domain="chat.elsewhere.net"))
    assert sim.state.requests == []
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


def test_ipv6_adds_aaaa_records(target, sim, settings):
    target.s = dataclasses.replace(settings, do=dataclasses.replace(settings.do, ipv6=True))
    record = target.launch(spec())
    assert sim.bodies("POST", "/v2/droplets")[0]["ipv6"] is True
    aaaa = [r for r in sim.bodies("POST", "/v2/domains/example.org/records") if r["type"] == "AAAA"]
    assert [r["name"] for r in aaaa] == ["chat", "matrix.chat", "element.chat", "riot.chat"]
    assert {r["data"] for r in aaaa} == {record.data["address_v6"]}
    target.destroy(record)
    assert sim.resources_left() == []


def test_the_vendored_api_description_is_digitaloceans():
    import gzip

    from tests.sim import api

    if not api.SHARED_OPENAPI.exists():
        pytest.skip(f"no {api.SHARED_OPENAPI} beside this clone to compare with")
    assert gzip.decompress(api.OPENAPI.read_bytes()) == api.SHARED_OPENAPI.read_bytes()


def test_the_simulator_refuses_what_digitalocean_would(sim):
    """The simulator is no fake that accepts anything: a body the API description does not allow
    is answered 422 and recorded (and the fixture fails the test that sent it)."""
    status, _, _ = sim.handle("POST", "/v2/droplets", {}, {"name": "a", "size": 5, "image": 1})
    assert status == 422 and sim.state.invalid
    sim.state.invalid.clear()
