"""The appliance's config templates, pyinfra style: one JSON fixture per case (args in, text out)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from tests.conftest import REPO, load_script

FIXTURES = sorted((Path(__file__).parent / "fixtures/render").glob("*.json"))
firstboot = load_script("images/files/usr/local/lib/outband/firstboot.py", "firstboot")


@pytest.fixture(scope="module")
def env() -> jinja2.Environment:
    return firstboot.template_env(firstboot.TEMPLATES_IN_REPO)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_render(env, fixture):
    case = json.loads(fixture.read_text())
    text = env.get_template(case["template"]).render(**case["args"])
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

    config = yaml.safe_load(env.get_template("homeserver.yaml.j2").render(domain="a.example.org"))
    assert config["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    assert config["database"]["args"]["host"] == "127.0.0.1"


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


def test_templates_dir_matches_the_image_path():
    assert Path("/usr/local/lib/outband/templates") == firstboot.TEMPLATES
    assert (REPO / "images/files/usr/local/lib/outband/templates").is_dir()


def test_homeserver_yaml_is_written_last(monkeypatch):
    """Its existence lets Synapse start (the unit's condition): everything it names exists first."""
    written: list[str] = []
    monkeypatch.setattr(firstboot, "write", lambda path, *args, **kwargs: written.append(Path(path).name))
    monkeypatch.setattr(firstboot.Path, "chmod", lambda self, mode: None)
    env = firstboot.template_env(firstboot.TEMPLATES_IN_REPO)
    contract = {"domain": "a.test", "public_ip": "192.0.2.1", "secrets": dict.fromkeys(firstboot.SECRET_NAMES, "x")}
    firstboot.render_configs(contract, env)
    assert written[-1] == "homeserver.yaml"
    assert "log.yaml" in written
