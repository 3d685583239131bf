"""`invoke bake --via packer`: the same recipe through Packer's qemu source, provisioned over SSH on a
live system (the path the DigitalOcean builder takes), then the result booted and checked."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import WEBCLIENT, bare_appliance, invoke

# Opt-in (OUTBAND_E2E_VIA_PACKER=1): a whole bake emulated under TCG takes ~15-20 min here, and the
# suite must stay within 40 min. What this path shares with DigitalOcean's (Packer, the same
# provisioners over SSH as root on a live system, the seal and its gate) runs in every CI run
# through the simulator's bake (test_digitalocean_sim.py); what only this one has (Packer's qemu
# source on the local base disk) runs here when asked.
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("OUTBAND_E2E_VIA_PACKER") != "1",
        reason="bake --via packer e2e is opt-in: OUTBAND_E2E_VIA_PACKER=1 (~15-20 min under TCG)",
    ),
]


@pytest.fixture(scope="module")
def packer_image(settings, baked):
    result = invoke("bake", "--via", "packer", "--webclient", WEBCLIENT, timeout=5400)
    pointer = json.loads((settings.dirs.output / "images/latest.json").read_text())
    images = settings.dirs.output / "images"
    manifest = json.loads((images / pointer["manifest"]).read_text())
    return {"image": images / pointer["image"], "manifest": manifest, "stdout": result.stdout}


def test_packer_bake_records_the_same_recipe(packer_image, baked):
    manifest = packer_image["manifest"]
    assert manifest["name"].endswith("-packer")
    assert manifest["recipe_sha256"] == baked["manifest"]["recipe_sha256"]  # one recipe, two paths
    assert manifest["wheels"] == baked["manifest"]["wheels"]
    for pkg in ("postgresql-17", "nginx", "coturn", "certbot", "python3-psycopg2"):
        assert pkg in manifest["debian_packages"]


def test_the_packer_image_boots_sealed(packer_image, settings):
    with bare_appliance(settings, "e2e-packer", packer_image["image"]) as (host, record):
        with host.sudo():
            assert host.check_output("ls /etc/ssh/ | grep '^ssh_host_' | sort").split() == [
                "ssh_host_ed25519_key",
                "ssh_host_ed25519_key.pub",
            ]
            assert host.check_output("ls -A /usr/local/share/ca-certificates") == ""
            # The build VM's login (the packer key) is gone; only this boot's operator key is there.
            operator = record.path("operator_ed25519.pub").read_text().split()[1]
            assert host.file("/home/outband/.ssh/authorized_keys").content_string.count("ssh-") == 1
            assert operator in host.file("/home/outband/.ssh/authorized_keys").content_string
        assert host.run("/opt/synapse/bin/python -c 'import synapse, psycopg2'").rc == 0
        assert host.service("outband-firstboot").is_enabled
        assert host.check_output("systemctl --failed --no-legend --plain") == ""
