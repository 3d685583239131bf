"""The appliance's config templates, pyinfra style: one JSON fixture per case (args in, text out)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import pytest

from tests.conftest import load_script

FIXTURES = sorted((Path(__file__).parent / "fixtures/render").glob("*.json"))
firstboot = load_script("images/files/usr/local/lib/outband/firstboot.py", "firstboot")


render_static = load_script("images/files/usr/local/lib/outband/render-static", "render_static")
# What first boot and render-static pass every template besides a case's own args.
SHARED = {
    "ports": firstboot.CONSTANTS["ports"],
    "relay": firstboot.CONSTANTS["relay_ports"],
    "metadata": firstboot.CONSTANTS["metadata"]["address"],
    "ssh_user": firstboot.CONSTANTS["ssh_user"],
}


@pytest.fixture(scope="module")
def env() -> jinja2.Environment:
    return firstboot.template_env()


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_render(env, fixture):
    case = json.loads(fixture.read_text())
    text = env.get_template(case["template"]).render(**{**SHARED, **case["args"]})
    for expected in case.get("contains", []):
        assert expected in text, expected
    for unexpected in case.get("absent", []):
        assert unexpected not in text, unexpected
    if "json" in case:
        rendered = json.loads(text)
        for key, value in case["json"].items():
            assert rendered[key] == value, key


def test_homeserver_yaml_is_valid_yaml(env):
    import yaml

    def render(whitelist: list[str] | None, ca: str | None = None, ips: tuple[str, ...] = ()) -> dict:
        text = env.get_template("homeserver.yaml.j2").render(
            domain="a.example.org",
            federation_whitelist=whitelist,
            federation_ca=ca,
            federation_allowed_ips=list(ips),
            **SHARED,
        )
        return yaml.safe_load(text)

    config = render(["a.example.org", "b.example.net"])
    assert config["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    assert config["database"]["args"]["host"] == "127.0.0.1"
    assert config["federation_domain_whitelist"] == ["a.example.org", "b.example.net"]
    assert config["federation"]["destination_max_retry_interval"] == "2m"  # a team member back soon is heard
    assert "federation_custom_ca_list" not in config and "ip_range_whitelist" not in config  # a cloud's
    assert "federation_domain_whitelist" not in render(None)  # --open-federation
    local = render(["a.example.org"], "/etc/synapse/federation-ca.pem", ("10.77.0.0/24",))  # the local target's
    assert local["federation_custom_ca_list"] == ["/etc/synapse/federation-ca.pem"]
    assert local["ip_range_whitelist"] == ["10.77.0.0/24"]


def test_templates_fail_loudly_on_a_missing_value(env):
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("homeserver.yaml.j2").render()


def test_every_denied_range_is_a_valid_range():
    import ipaddress

    for entry in firstboot.DENIED_PEER_IPS:
        for part in entry.split("-"):
            ipaddress.ip_address(part)
    joined = " ".join(firstboot.DENIED_PEER_IPS)
    for must in ("169.254.0.0", "10.0.0.0", "127.0.0.0", "172.16.0.0", "192.168.0.0", "fc00::", "fe80::"):
        assert must in joined


def test_bake_time_configs_render_from_the_contract(tmp_path):
    """render-static (run by 40-appliance.sh) writes the firewall and cloud-init's settings."""
    render_static.main(tmp_path)
    rules = (tmp_path / "etc/nftables.conf").read_text()
    ports = firstboot.CONSTANTS["ports"]
    assert f"tcp dport {ports['ssh']} accept" in rules
    assert f"udp dport {min(firstboot.CONSTANTS['relay_ports'].values())}-" in rules
    assert "{{" not in rules
    import yaml

    cloud = yaml.safe_load((tmp_path / "etc/cloud/cloud.cfg.d/99-outband.cfg").read_text())
    assert cloud["system_info"]["default_user"]["name"] == firstboot.CONSTANTS["ssh_user"]
    assert cloud["datasource_list"][:2] == ["NoCloud", "DigitalOcean"]
    assert cloud["disable_root"] is True


def test_homeserver_yaml_is_written_last(monkeypatch):
    """Its existence lets Synapse start (the unit's condition): everything it names exists first."""
    written: list[str] = []
    monkeypatch.setattr(firstboot, "write", lambda path, *args, **kwargs: written.append(Path(path).name))
    monkeypatch.setattr(firstboot.Path, "chmod", lambda self, mode: None)
    env = firstboot.template_env()
    contract = {
        "domain": "a.test",
        "public_ip": "192.0.2.1",
        "secrets": dict.fromkeys(["turn"], "x"),
        "federation": {"open": False, "servers": ["a.test"]},
    }
    firstboot.render_configs(contract, env)
    assert written[-1] == "homeserver.yaml"
    assert "log.yaml" in written


def tls12_ciphers(text: str, pattern: str) -> list[str]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, pattern
    return match.group(1).split(":")


def test_every_tls_port_offers_the_same_tls12_suites_ecdhe_and_aead_only():
    """Issue 19: Mozilla's intermediate profile without DHE on 443, 8448 (nginx's http) and 5349
    (nginx's stream in front of coturn), which set their suites separately. What a scanner actually
    gets from a launched appliance: tests/e2e/test_scanners.py."""
    root = Path(__file__).parents[2] / "images/files"
    pattern = r"^\s*ssl_ciphers (\S+);$"
    http = tls12_ciphers((root / "etc/nginx/conf.d/outband.conf").read_text(), pattern)
    stream = tls12_ciphers((root / "usr/local/lib/outband/templates/nginx-turns.conf.j2").read_text(), pattern)
    assert http == stream
    assert all(c.startswith("ECDHE-") and ("-GCM-" in c or "CHACHA20-POLY1305" in c) for c in http), http
