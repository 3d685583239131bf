from __future__ import annotations

import io
import json

import pycdlib
import pytest
import yaml

from appliance import contract as contract_file
from appliance import secrets, userdata
from appliance.errors import ExitStatus, OutbandError


@pytest.fixture
def launch_secrets():
    return secrets.generate()


@pytest.fixture
def contract(launch_secrets):
    return userdata.contract(
        "alpha",
        "alpha.example.org",
        "ops@example.org",
        "https://acme.example/dir",
        None,
        launch_secrets,
        public_ip="127.0.100.1",
        private_ip="10.0.2.15",
    )


def test_rendered_user_data_is_cloud_config_carrying_the_contract(contract):
    host = secrets.ssh_keypair("host@alpha")
    operator = secrets.ssh_keypair("operator@alpha")
    text = userdata.render(contract, host, operator.public_openssh)
    assert text.startswith("#cloud-config\n")
    parsed = yaml.safe_load(text)
    assert parsed["hostname"] == "alpha"
    assert parsed["fqdn"] == "matrix.alpha.example.org"
    assert parsed["ssh_keys"]["ed25519_private"] == host.private_openssh
    assert parsed["ssh_keys"]["ed25519_public"] == host.public_openssh
    assert parsed["ssh_authorized_keys"] == [operator.public_openssh]
    (launch_file,) = parsed["write_files"]
    assert launch_file["path"] == contract_file.PATHS["contract"]
    assert launch_file["permissions"] == "0600"
    assert json.loads(launch_file["content"]) == contract


def test_contract_survives_yaml_special_characters(launch_secrets):
    odd = userdata.contract(
        "alpha",
        "alpha.example.org",
        "ops+ir@example.org",
        "https://acme.example/dir?x='1'&y=#",
        "-----BEGIN CERTIFICATE-----\nMII: x\n-----END CERTIFICATE-----\n",
        launch_secrets,
    )
    text = userdata.render(odd, secrets.ssh_keypair("h"), secrets.ssh_keypair("o").public_openssh)
    assert json.loads(yaml.safe_load(text)["write_files"][0]["content"]) == odd


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"domain": "Not_A_Domain"}, "$.domain"),
        ({"domain": "localhost"}, "$.domain"),
        ({"domain": "-bad.example.org"}, "$.domain"),
        ({"name": "UPPER"}, "$.name"),
        ({"name": "a"}, "$.name"),
        ({"contact_email": "nobody"}, "$.contact_email"),
        ({"schema": 1}, "$.schema"),
        ({"public_ip": "300.1.1.1"}, "$.public_ip"),
        ({"acme": {"directory": "http://acme.example/dir", "ca_pem": None}}, "$.acme.directory"),
        ({"surprise": True}, "$"),
        ({"federation": {"open": False, "servers": ["Bad_Server"]}}, "$.federation.servers[0]"),
        ({"federation": {"servers": []}}, "$.federation"),
    ],
)
def test_the_schema_rejects_a_bad_contract_naming_the_field(contract, change, where):
    with pytest.raises(OutbandError) as err:
        userdata.validate({**contract, **change})
    assert err.value.message.startswith(f"launch contract: {where} ")
    assert err.value.hint and "contract.json" in err.value.hint
    assert err.value.status == ExitStatus.USAGE


def test_federation_is_with_the_team_and_this_server_only_unless_opened(launch_secrets):
    def federation(**kwargs) -> dict:
        return userdata.contract(
            "bravo", "b.example.org", "ops@example.org", "https://acme.example/dir", None, launch_secrets, **kwargs
        )["federation"]

    assert federation() == {"open": False, "servers": ["b.example.org"]}
    team = federation(federation=("c.example.net", "a.example.org", "b.example.org"))
    assert team == {"open": False, "servers": ["a.example.org", "b.example.org", "c.example.net"]}
    assert federation(open_federation=True)["open"] is True


@pytest.mark.parametrize("field", ["signing_key", "macaroon", "turn", "db_password"])
def test_a_short_or_malformed_secret_is_named_but_never_shown(contract, field):
    bad = {
        **contract,
        "secrets": {**contract["secrets"], field: "short-secret-xyz"[: 10 if field != "signing_key" else 16]},
    }
    with pytest.raises(OutbandError) as err:
        userdata.validate(bad)
    assert f"$.secrets.{field}" in err.value.message
    assert bad["secrets"][field] not in str(err.value)


def test_the_appliance_reads_the_same_schema_and_agrees(contract):
    """First boot validates with the same file (and Debian's jsonschema): what the operator's side
    accepts, it accepts; what it refuses, it refuses at the same place."""
    from tests.conftest import load_script

    firstboot = load_script("images/files/usr/local/lib/outband/firstboot.py", "firstboot_schema")
    assert firstboot.contract_problems(contract) == []
    broken = {**contract, "secrets": {**contract["secrets"], "turn": "x"}}
    (problem,) = firstboot.contract_problems(broken)
    assert problem.startswith("$.secrets.turn ") and broken["secrets"]["turn"] not in problem.split(" ", 1)[1]


@pytest.mark.parametrize(
    ("given", "dns"),
    [
        ("chat.example.org.", "chat.example.org"),
        ("Chat.Example.ORG", "chat.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("出事.例え.jp", "xn--3kq96f.xn--r8jz45g.jp"),  # RFC 3492 punycode of each label
    ],
)
def test_domains_are_taken_as_dns_spells_them(given, dns):
    assert userdata.validate_domain(given) == dns


@pytest.mark.parametrize("given", ["", "localhost", "a..b", "-x.example.org", "x_y.example.org", "a b.example.org"])
def test_an_invalid_domain_is_a_usage_error_with_a_hint(given):
    with pytest.raises(OutbandError) as err:
        userdata.validate_domain(given)
    assert "invalid domain" in err.value.message and err.value.hint and err.value.status == ExitStatus.USAGE


def test_operator_key_must_be_an_openssh_public_key(contract):
    with pytest.raises(OutbandError, match="OpenSSH public key"):
        userdata.render(contract, secrets.ssh_keypair("h"), "not a key")


def test_seed_is_a_cidata_iso_with_user_and_meta_data(tmp_path):
    seed = userdata.write_seed(tmp_path / "seed.iso", "#cloud-config\n{}\n", userdata.meta_data("alpha", "alpha-1"))
    assert seed.stat().st_mode & 0o777 == 0o600
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, expected in (("user-data", b"#cloud-config\n{}\n"), ("meta-data", b"instance-id: alpha-1\n")):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue().startswith(expected)
    finally:
        iso.close()
