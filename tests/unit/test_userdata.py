from __future__ import annotations

import io
import json

import pycdlib
import pytest
import yaml

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
    assert launch_file["path"] == "/etc/outband/launch.json"
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
    ("field", "value", "message"),
    [
        ("domain", "Not_A_Domain", "invalid domain"),
        ("domain", "localhost", "invalid domain"),
        ("domain", "-bad.example.org", "invalid domain"),
        ("name", "UPPER", "invalid appliance name"),
        ("name", "a", "invalid appliance name"),
        ("contact_email", "nobody", "invalid contact e-mail"),
        ("schema", 2, "schema 2 is not supported"),
        ("public_ip", "300.1.1.1", "is not an IP address"),
    ],
)
def test_validation_rejects_bad_input_with_a_hint(contract, field, value, message):
    bad = {**contract, field: value}
    with pytest.raises(OutbandError) as err:
        userdata.validate(bad)
    assert message in err.value.message
    assert err.value.hint
    assert err.value.status == ExitStatus.USAGE


def test_validation_rejects_plain_http_acme(contract):
    with pytest.raises(OutbandError, match="not an https URL"):
        userdata.validate({**contract, "acme": {"directory": "http://acme.example/dir", "ca_pem": None}})


@pytest.mark.parametrize("field", ["signing_key", "macaroon", "turn", "db_password"])
def test_validation_rejects_missing_or_short_secrets(contract, field):
    with pytest.raises(OutbandError, match=field):
        userdata.validate({**contract, "secrets": {**contract["secrets"], field: "short"}})


def test_validation_rejects_a_signing_key_in_the_wrong_format(contract):
    with pytest.raises(OutbandError, match="signing key"):
        userdata.validate({**contract, "secrets": {**contract["secrets"], "signing_key": "x" * 60}})


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
