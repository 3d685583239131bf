"""Issue 18: the local target's network between appliances, and the team changed in place."""

from __future__ import annotations

import json
import subprocess

import pytest

from appliance import localnet, qemu, secrets, userdata
from appliance.errors import OutbandError
from tests.conftest import load_script
from tests.unit.test_qemu import spec

SEGMENT = localnet.Segment("239.255.77.1:41000", "10.0.2.2:47000")


def test_each_appliance_has_its_own_address_and_mac_on_the_segment():
    assert localnet.address("127.0.100.7") == "10.77.0.7"
    assert localnet.mac("127.0.100.7") == "52:54:00:77:00:07"
    assert localnet.mac("127.0.100.200") == "52:54:00:77:00:c8"


def test_the_contract_carries_the_segment_and_the_federation_ca():
    part = localnet.contract_part("127.0.100.3", SEGMENT, ["b.outband.test", "chat.example.org"])
    assert part == {
        "mac": "52:54:00:77:00:03",
        "address": "10.77.0.3/24",
        "resolver": "10.0.2.2:47000",
        "upstream": "10.0.2.3",
        "domains": ["b.outband.test", "chat.example.org", "outband.test"],
    }
    root = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    contract = userdata.contract(
        "charlie",
        "charlie.outband.test",
        "ops@example.org",
        "https://10.0.2.2:14000/dir",
        None,
        secrets.generate(),
        federation=("b.outband.test",),
        federation_ca_pem=root,
        appliance_network=part,
    )
    assert contract["schema"] == 5
    assert contract["federation"]["ca_pem"] == root
    assert contract["appliance_network"] == part


def test_a_cloud_contract_has_neither(tmp_path):
    contract = userdata.contract(
        "delta", "delta.example.org", "ops@example.org", "https://acme/dir", None, secrets.generate()
    )
    assert "appliance_network" not in contract and "ca_pem" not in contract["federation"]


def test_a_bad_segment_is_refused():
    part = localnet.contract_part("127.0.100.3", SEGMENT, [])
    with pytest.raises(OutbandError, match="appliance_network"):
        userdata.contract(
            "charlie",
            "charlie.outband.test",
            "ops@example.org",
            "https://acme/dir",
            None,
            secrets.generate(),
            appliance_network={**part, "address": "192.168.1.3/24"},  # only the project's 10.x network
        )


def test_the_vm_gets_a_second_nic_on_the_multicast_segment_on_loopback(tmp_path):
    from dataclasses import replace

    args = qemu.argv(replace(spec(tmp_path), segment=("239.255.77.1:41000", "52:54:00:77:00:07")))
    assert "socket,id=net1,mcast=239.255.77.1:41000,localaddr=127.0.0.1" in args
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:77:00:07" in args
    assert not any("net1" in a for a in qemu.argv(spec(tmp_path)))  # a bare boot has none


# -- federation-team: the team changed on a running appliance -------------------------------------
HOMESERVER = """server_name: "a.outband.test"
trusted_key_servers: []
federation_domain_whitelist: ["a.outband.test"]
suppress_key_server_warning: true
"""


@pytest.fixture
def team_script(tmp_path, monkeypatch):
    script = load_script("images/files/usr/local/lib/outband/federation-team", "federation_team")
    config = tmp_path / "homeserver.yaml"
    config.write_text(HOMESERVER)
    dropin = tmp_path / "outband-appliances.conf"
    dropin.write_text("[Network]\nDNS=10.0.2.2:47000\nDomains=~outband.test\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(script, "CONFIG", config)
    monkeypatch.setattr(script, "UPLINK_DROPIN", dropin)
    monkeypatch.setattr(script.subprocess, "run", lambda argv, check: ran.append(argv))
    return script, config, dropin, ran


def test_a_new_member_joins_the_whitelist_and_synapse_restarts(team_script, capsys):
    script, config, dropin, ran = team_script
    script.main(["b.outband.test", "chat.example.org"])
    listed = '["a.outband.test", "b.outband.test", "chat.example.org"]'
    assert f"federation_domain_whitelist: {listed}\n" in config.read_text()
    assert "suppress_key_server_warning: true" in config.read_text()  # the rest untouched
    assert "Domains=~outband.test ~chat.example.org\n" in dropin.read_text()  # b is under outband.test already
    assert ran == [["networkctl", "reload"], ["systemctl", "restart", "synapse.service"]]
    assert json.loads(capsys.readouterr().out)["changed"] is True


def test_the_same_team_again_changes_nothing(team_script):
    script, config, _, ran = team_script
    script.main(["a.outband.test"])
    assert config.read_text() == HOMESERVER and ran == []


@pytest.mark.parametrize("argv", [[], ["Not_A_Name"], ["x"]])
def test_bad_input_exits_2_and_changes_nothing(team_script, argv):
    script, config, _, ran = team_script
    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    assert exit_.value.code == 2 and config.read_text() == HOMESERVER and ran == []


def test_an_openly_federating_appliance_has_no_team_to_change(team_script, capsys):
    script, config, _, _ = team_script
    config.write_text(HOMESERVER.replace('federation_domain_whitelist: ["a.outband.test"]\n', ""))
    with pytest.raises(SystemExit) as exit_:
        script.main(["b.outband.test"])
    assert exit_.value.code == 2 and "--open-federation" in capsys.readouterr().err


def test_the_script_is_valid_python_that_runs_as_a_program():
    result = subprocess.run(
        ["python3", "-m", "py_compile", "images/files/usr/local/lib/outband/federation-team"], capture_output=True
    )
    assert result.returncode == 0, result.stderr
