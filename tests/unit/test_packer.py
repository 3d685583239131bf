"""Packer: argument building, machine-readable parsing, and `packer validate` of both sources."""

from __future__ import annotations

import shutil

import pytest

from appliance import packer
from appliance.cache import Cache
from appliance.errors import OutbandError
from appliance.provisioners import PackerDigitalOcean
from tests.conftest import REPO, repo_settings

needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")


def test_machine_readable_lines_are_parsed_with_packer_escapes():
    record = packer.parse_line("1700000000,qemu,ui,say,==> qemu: Waiting for SSH%!(PACKER_COMMA) 30s\\nok")
    assert record == packer.Record("qemu", "ui", ["say", "==> qemu: Waiting for SSH, 30s\nok"])
    assert packer.parse_line("not machine readable") is None
    assert packer.parse_line("1700000000,,ui,error,boom").data == ["error", "boom"]


@needs_packer
def test_arguments_pass_variables_and_only():
    args = packer.argv("build", {"stage_dir": "/s", "base_disk": "/b"}, only="qemu")
    assert args[1:] == [
        "build",
        "-machine-readable",
        "-color=false",
        "-var",
        "base_disk=/b",
        "-var",
        "stage_dir=/s",
        "-only=qemu",
        str(REPO / "images/packer.json"),
    ]
    assert "-color=false" not in packer.argv("validate", {})  # packer 1.6's validate has no -color


def test_packer_gets_its_own_environment_and_this_process_keeps_its_own(monkeypatch):
    monkeypatch.delenv("PACKER_CACHE_DIR", raising=False)
    env = packer.environment({"DIGITALOCEAN_TOKEN": "t"})
    assert env["DIGITALOCEAN_TOKEN"] == "t" and env["PACKER_CACHE_DIR"].endswith(".cache/outband/packer")
    import os

    assert "DIGITALOCEAN_TOKEN" not in os.environ or os.environ["DIGITALOCEAN_TOKEN"] != "t"


def test_the_template_runs_every_provision_script_in_order_with_the_seal_last():
    import json

    from appliance import provision

    template = json.loads((REPO / "images/packer.json").read_text())
    scripts = [s for p in template["provisioners"] for s in p.get("scripts", [])]
    assert scripts == [f"images/provision/{s.name}" for s in provision.scripts()]
    assert template["provisioners"][-1]["scripts"] == ["images/provision/90-seal.sh"]
    assert {b["name"] for b in template["builders"]} == {"qemu", "digitalocean"}
    assert "do_token" in template["sensitive-variables"]
    qemu = next(b for b in template["builders"] if b["name"] == "qemu")
    netdev = next(a for a in qemu["qemuargs"] if a[0] == "-netdev")[1]
    assert "hostfwd=tcp:127.0.0.1:" in netdev  # the SSH forward listens on loopback only
    # Both sources log in as root, as on a cloud's stock image, and wait for its own first boot
    # (cloud-init may hold the dpkg lock) before any script runs.
    assert {b["ssh_username"] for b in template["builders"]} == {"root"}
    assert template["provisioners"][0]["inline"][0].startswith("cloud-init status --wait")


@needs_packer
def test_packer_validates_the_digitalocean_source(tmp_path):
    provisioner = PackerDigitalOcean(repo_settings(), Cache(tmp_path), token="dummy-token-for-validate")
    variables = provisioner.variables(tmp_path, tmp_path / "facts.tsv", "outband-test")
    assert variables["do_api_url"] == "https://api.digitalocean.com"
    packer.validate(variables, only="digitalocean", env={"DIGITALOCEAN_TOKEN": provisioner.token})


@needs_packer
def test_packer_validates_the_qemu_source(tmp_path):
    from appliance import secrets
    from appliance.state import write_private

    key = write_private(tmp_path / "key", secrets.ssh_keypair("t").private_openssh)
    disk = tmp_path / "base.qcow2"
    disk.write_bytes(b"")
    packer.validate(
        {
            "stage_dir": str(tmp_path),
            "facts_out": str(tmp_path / "f"),
            "kernel_out": str(tmp_path / "k"),
            "base_disk": str(disk),
            "http_dir": str(tmp_path),
            "ssh_private_key_file": str(key),
            "output_dir": str(tmp_path / "o"),
            "accelerator": "tcg",
        },
        only="qemu",
    )


@needs_packer
def test_an_invalid_template_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    monkeypatch.delenv("DIGITALOCEAN_API_TOKEN", raising=False)
    with pytest.raises(OutbandError, match="packer validate failed"):
        packer.validate({"stage_dir": str(tmp_path)}, only="digitalocean")
