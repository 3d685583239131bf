"""Packer: argument building, machine-readable parsing, and `packer validate` of both sources."""

from __future__ import annotations

import shutil

import pytest

from appliance import packer
from appliance.bake import packer_variables_digitalocean
from appliance.errors import OutbandError
from tests.conftest import REPO, repo_settings


def test_machine_readable_lines_are_parsed_with_packer_escapes():
    record = packer.parse_line("1700000000,qemu,ui,say,==> qemu: Waiting for SSH%!(PACKER_COMMA) 30s\\nok")
    assert record == packer.Record("qemu", "ui", ["say", "==> qemu: Waiting for SSH, 30s\nok"])
    assert packer.parse_line("not machine readable") is None
    assert packer.parse_line("1700000000,,ui,error,boom").data == ["error", "boom"]


def test_arguments_pass_variables_and_only():
    assert packer.arguments({"a": "1"}) == {"var": {"a": "1"}}
    args = packer.arguments({"stage_dir": "/s", "base_disk": "/b"}, only="qemu", build=True)
    assert args == {"var": {"stage_dir": "/s", "base_disk": "/b"}, "color": "false", "only": "qemu"}
    from packerpy import PackerExecutable

    exploded = PackerExecutable._explode_args(**args)
    assert exploded == ["-var", "stage_dir=/s", "-var", "base_disk=/b", "-color=false", "-only=qemu"]


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


needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")


@needs_packer
def test_packer_validates_the_digitalocean_source(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dummy-token-for-validate")
    s = repo_settings()
    packer.validate(
        packer_variables_digitalocean(s, tmp_path, tmp_path / "facts.tsv", "outband-test"), only="digitalocean"
    )


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
