"""The seal gate must fail on every kind of leftover it promises to catch (plant one, expect failure)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trustme

from appliance import secrets
from tests.conftest import REPO, load_script

gate = load_script("images/seal-gate.py", "seal_gate")
render_static = load_script("images/files/usr/local/lib/outband/render-static", "render_static_gate")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A minimal sealed root tree."""
    root = tmp_path / "root"
    for d in (
        "etc/ssh",
        "etc/ssl/certs",
        "usr/local/share/ca-certificates",
        "var/lib/cloud",
        "root",
        "home/x",
        "opt/synapse/lib/python3.13/site-packages/synapse/util",
    ):
        (root / d).mkdir(parents=True)
    (root / "etc/machine-id").write_text("")  # as 90-seal.sh leaves it
    (root / "etc/shadow").write_text("root:*:20000:0:99999:7:::\nsynapse:!:20000::::::\n")
    (root / "etc/ssl/certs/ca-certificates.crt").write_text(trustme.CA().cert_pem.bytes().decode())
    (root / "etc/ssh/sshd_config").write_text("PasswordAuthentication no\n")
    # The boot contract, as 40-appliance.sh and 90-seal.sh leave it.
    shutil.copytree(REPO / "images/files/usr/local/lib/outband", root / "usr/local/lib/outband")
    render_static.main(root)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\noutband:x:1000:1000::/home/outband:/bin/bash\n")
    (root / "etc/sudoers.d").mkdir(parents=True)
    (root / "etc/sudoers.d/90-outband").write_text("outband ALL=(ALL) NOPASSWD:ALL\n")
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    for wants, unit in (("sysinit.target.wants", "systemd-resolved"), ("multi-user.target.wants", "systemd-networkd")):
        (root / "etc/systemd/system" / wants).mkdir(parents=True, exist_ok=True)
        (root / "etc/systemd/system" / wants / f"{unit}.service").symlink_to(f"/usr/lib/systemd/system/{unit}.service")
    return root


@pytest.mark.parametrize(
    ("breakage", "finding"),
    [
        (
            lambda t: (t / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n"),
            "the SSH user 'outband' does not exist",
        ),
        (lambda t: (t / "etc/sudoers.d/90-outband").unlink(), "has no sudo rule"),
        (lambda t: (t / "etc/cloud/cloud.cfg.d/99-outband.cfg").unlink(), "cloud-init's settings"),
        (
            lambda t: ((t / "etc/resolv.conf").unlink(), (t / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")),
            "stub",
        ),
        (
            lambda t: (t / "etc/systemd/system/sysinit.target.wants/systemd-resolved.service").unlink(),
            "resolved.service",
        ),
        (
            lambda t: (
                (t / "etc/network/interfaces.d").mkdir(parents=True),
                (t / "etc/network/interfaces.d/50-cloud-init").write_text("x"),
            ),
            "network config is left",
        ),
    ],
    ids=["no-user", "no-sudo", "no-cloud-cfg", "resolv-file", "no-resolved", "build-network"],
)
def test_the_boot_contract_is_checked(tree, breakage, finding):
    """Every appliance's first boot needs the SSH user and a working resolver, on every bake path
    (a cloud's stock image has neither of Outband's): the gate fails a bake without them."""
    breakage(tree)
    problems = gate.findings(tree, [])
    assert any(finding in p for p in problems), problems


def test_a_sealed_tree_passes(tree):
    assert gate.findings(tree, []) == []
    assert gate.main(["--root", str(tree)]) == 0


def plant_private_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.ssh_keypair("planted").private_openssh)


@pytest.mark.parametrize(
    "where", ["etc/ssh/ssh_host_ed25519_key", "root/id_ed25519", "var/lib/app/key.pem", "opt/synapse/secret.key"]
)
def test_a_planted_private_key_fails_the_gate(tree, where):
    plant_private_key(tree / where)
    problems = gate.findings(tree, [])
    assert any(f"/{where}" in p for p in problems), problems
    assert gate.main(["--root", str(tree)]) == 1


def test_a_pem_private_key_fails_the_gate(tree):
    ca = trustme.CA()
    (tree / "etc/ssl/private").mkdir(parents=True)
    (tree / "etc/ssl/private/snakeoil.key").write_bytes(ca.issue_cert("x.test").private_key_pem.bytes())
    assert any("snakeoil.key" in p for p in gate.findings(tree, []))


def test_the_marker_string_alone_is_not_a_key(tree):
    (tree / "usr/bin").mkdir(parents=True)
    marker = b"-----BEGIN " + b"OPENSSH PRIVATE KEY-----"  # the marker alone, no key body
    (tree / "usr/bin/ssh-keygen").write_bytes(b"\x7fELF..." + marker + b"\x00more")
    assert gate.findings(tree, []) == []


def test_published_test_fixtures_in_packages_are_not_findings(tree):
    plant_private_key(tree / "opt/synapse/lib/python3.13/site-packages/twisted/test/server.pem")
    plant_private_key(tree / "opt/synapse/lib/python3.13/site-packages/synapse/util/manhole.py")
    selftest = "opt/recorder/lib/python3.13/site-packages/Crypto/SelfTest/Signature"
    plant_private_key(tree / selftest / "__pycache__/test_pss.cpython-313.pyc")
    assert gate.findings(tree, []) == []
    # …but a key in a package's ordinary module is found.
    plant_private_key(tree / "opt/recorder/lib/python3.13/site-packages/nio/__pycache__/store.cpython-313.pyc")
    assert len(gate.findings(tree, [])) == 1


def test_a_synapse_signing_key_fails_the_gate(tree):
    (tree / "etc/synapse").mkdir()
    (tree / "etc/synapse/signing.key").write_text(secrets.synapse_signing_key() + "\n")
    assert any("Synapse signing key" in p for p in gate.findings(tree, []))


@pytest.mark.parametrize("where", ["root/.ssh/authorized_keys", "home/x/.ssh/authorized_keys"])
def test_authorized_keys_fail_the_gate(tree, where):
    (tree / where).parent.mkdir(parents=True)
    (tree / where).write_text(secrets.ssh_keypair("k").public_openssh + "\n")
    assert any("authorized keys" in p for p in gate.findings(tree, []))


def test_a_password_hash_fails_the_gate(tree):
    (tree / "etc/shadow").write_text("root:$y$j9T$abc$def:20000:0:99999:7:::\n")
    assert any("password hash for user root" in p for p in gate.findings(tree, []))


def test_an_initialized_machine_id_fails_the_gate(tree):
    (tree / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert any("machine-id" in p for p in gate.findings(tree, []))


def test_shell_history_fails_the_gate(tree):
    (tree / "root/.bash_history").write_text("curl -H 'Authorization: Bearer x'\n")
    assert any("history" in p for p in gate.findings(tree, []))


def test_launch_contract_and_cloud_init_state_fail_the_gate(tree):
    (tree / "etc/outband").mkdir()
    (tree / "etc/outband/launch.json").write_text("{}")
    (tree / "var/lib/cloud/instances/i-1").mkdir(parents=True)
    problems = gate.findings(tree, [])
    assert any("launch.json" in p for p in problems)
    assert any("cloud-init instance state" in p for p in problems)


def test_an_extra_ca_left_in_the_trust_store_fails_the_gate(tree, tmp_path):
    proxy_ca = trustme.CA(organization_name="TLS-inspecting proxy")
    pem = proxy_ca.cert_pem.bytes()
    bundle = tree / "etc/ssl/certs/ca-certificates.crt"
    bundle.write_bytes(bundle.read_bytes() + pem)
    ca_file = tmp_path / "proxy.crt"
    ca_file.write_bytes(pem)
    assert any("build-time extra CA" in p for p in gate.findings(tree, [pem]))
    assert gate.main(["--root", str(tree), "--forbid-ca", str(ca_file)]) == 1


def test_an_extra_ca_file_left_in_local_certificates_fails_the_gate(tree):
    (tree / "usr/local/share/ca-certificates/outband-build").mkdir()
    (tree / "usr/local/share/ca-certificates/outband-build/extra-0.crt").write_text("x")
    assert any("extra CA certificate present" in p for p in gate.findings(tree, []))
