"""The baked image: outputs, pins, reproducibility, and the image itself booted with no launch contract."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import WEBCLIENT, bare_appliance, invoke

pytestmark = pytest.mark.vm


def test_bake_writes_image_manifest_and_sbom(baked):
    assert baked["image"].stat().st_size < 500 * 2**20  # issue target: compressed qcow2 ≤ 500 MB
    manifest = baked["manifest"]
    assert len(manifest["recipe_sha256"]) == 64
    for pkg in (
        "postgresql-17",
        "nginx",
        "coturn",
        "certbot",
        "nftables",
        "unattended-upgrades",
        "cloud-init",
        "linux-image-cloud-amd64",
        "python3-psycopg2",
    ):
        assert pkg in manifest["debian_packages"], pkg
    assert manifest["wheels"]["matrix-synapse"]["version"]
    assert manifest["wheels"]["matrix-synapse"]["sha256"]
    components = {c["name"]: c for c in baked["sbom"]["components"]}
    assert baked["sbom"]["bomFormat"] == "CycloneDX"
    assert components["matrix-synapse"]["purl"].startswith("pkg:pypi/matrix-synapse@")
    assert components["nginx"]["purl"].startswith("pkg:deb/debian/nginx@")
    web = "hydrogen-view-sdk" if WEBCLIENT == "hydrogen" else "element-web"
    assert web in components
    assert manifest["webclient"]["sha256"]
    assert not any(c["name"] in ("gcc", "cpp", "make") for c in baked["sbom"]["components"])


@pytest.fixture(scope="module")
def bare(baked, settings):
    with bare_appliance(settings, "e2e-bare", baked["image"]) as booted:
        yield booted


def test_image_holds_the_appliance_packages_and_users(bare):
    host, _ = bare
    for pkg in ("postgresql-17", "nginx", "coturn", "certbot", "nftables", "unattended-upgrades", "python3-psycopg2"):
        assert host.package(pkg).is_installed, pkg
    for pkg in ("gcc", "cpp", "make", "python3-dev", "libpq-dev"):
        assert not host.package(pkg).is_installed, pkg
    for user in ("synapse", "turnserver", "postgres", "www-data"):
        assert host.user(user).exists
        assert host.user(user).shell in ("/usr/sbin/nologin", "/bin/false", "/bin/bash")  # postgres: bash
    assert host.file("/opt/synapse/bin/python").exists
    assert host.run("/opt/synapse/bin/python -c 'import synapse, psycopg2'").rc == 0


def test_image_units_enabled_but_waiting_for_a_launch_contract(bare):
    host, _ = bare
    for unit in ("outband-firstboot", "synapse", "nginx", "coturn", "nftables", "ssh", "unattended-upgrades"):
        assert host.service(unit).is_enabled, unit
    # No contract: first boot is skipped by its condition, so nothing with a config runs.
    for unit in ("outband-firstboot", "synapse", "nginx", "coturn"):
        assert not host.service(unit).is_running, unit
    assert host.service("nftables").is_running or host.run("sudo nft list ruleset").rc == 0
    assert host.check_output("systemctl --failed --no-legend --plain") == ""


def test_without_a_contract_synapse_is_not_started_early(bare):
    """Synapse's unit starts early (imports overlapping cloud-init and first boot) only on a boot
    the launcher flags as bringing a contract; a bare boot is not flagged: skipped, not failed."""
    host, _ = bare
    shown = host.check_output("systemctl show synapse -p ActiveState -p ConditionResult")
    unit = dict(line.split("=", 1) for line in shown.splitlines())
    assert unit == {"ActiveState": "inactive", "ConditionResult": "no"}, unit
    assert host.check_output("ss -Hltn '( sport = :8008 )'") == ""


def test_boot_skips_first_boot_presets_fsck_and_remount(bare):
    """The direct boot's root is mounted read-write by the kernel with fstab's options (fstab=no):
    no fsck or remount units; an empty machine-id is made at boot without "first boot" semantics."""
    host, _ = bare
    assert "rw" in host.mount_point("/").options and "discard" in host.mount_point("/").options
    for unit in ("systemd-fsck-root", "systemd-remount-fs", "systemd-firstboot"):
        assert host.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout.strip() == "0", unit
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32
    # The seed's drivers are loaded at the start of the boot; modules the appliance never needs are not.
    modules = host.check_output("cut -d' ' -f1 /proc/modules").split()
    assert {"ahci", "sr_mod", "isofs"} <= set(modules)
    assert not {"kvm_amd", "kvm_intel", "sctp", "vmw_vmci"} & set(modules)


def test_image_holds_synapses_schema_empty_and_without_a_password(bare):
    host, _ = bare
    sql = (
        "SELECT (SELECT max(version) FROM schema_version), (SELECT count(*) FROM users), "
        "(SELECT count(*) FROM server_keys_json), "
        "(SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'synapse')"
    )
    with host.sudo("postgres"):
        version, users, keys, no_password = host.check_output(f'psql -At -F " " synapse -c "{sql}"').split()
    assert int(version) > 0
    assert (users, keys, no_password) == ("0", "0", "t")


def test_postgresql_is_run_by_systemd_itself(bare):
    """Not through pg_ctlcluster (a Perl wrapper: seconds of every boot under emulation): the unit
    runs the server, which tells systemd when it accepts connections; Debian's tools still see it."""
    host, _ = bare
    unit = host.service("postgresql@17-main").systemd_properties
    assert (unit["Type"], unit["ActiveState"]) == ("notify", "active")
    assert host.check_output(f"ps -o user=,comm= -p {unit['MainPID']}").split() == ["postgres", "postgres"]
    assert host.check_output("pg_lsclusters --no-header").split()[3] == "online"


def test_launcher_boots_the_kernel_directly_with_a_lean_unit_chain(bare):
    host, _ = bare
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert "root=/dev/nvme0n1p1" in cmdline and "ds=nocloud" in cmdline
    assert not host.mount_point("/sys/kernel/debug").exists
    assert not host.mount_point("/sys/kernel/tracing").exists
    # Caches were built at bake time: nothing rebuilds them at first boot.
    for unit in ("ldconfig", "systemd-hwdb-update", "systemd-journal-catalog-update"):
        assert host.service(unit).systemd_properties["ConditionResult"] == "no", unit


def test_image_firewall_is_default_drop_with_only_the_designed_ports(bare):
    host, _ = bare
    with host.sudo():
        chain = host.check_output("nft list chain inet outband input")
    assert "policy drop" in chain
    for fragment in (
        "tcp dport 22 accept",
        "tcp dport { 80, 443, 8448 } accept",
        "tcp dport { 3478, 5349 } accept",
        "udp dport 3478 accept",
        "udp dport 49152-49171 accept",
    ):
        assert fragment in chain, fragment


def test_image_is_sealed(bare):
    host, record = bare
    with host.sudo():
        # Only the key injected for this boot: nothing baked in.
        assert host.check_output("ls /etc/ssh/ | grep '^ssh_host_' | sort").split() == [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
        ]
        served = host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[1]
        assert served == record.path("host_ed25519.pub").read_text().split()[1]
        keys = host.check_output("find / -xdev -name 'authorized_keys*' 2>/dev/null").split()
        assert sorted(keys) == ["/home/outband/.ssh/authorized_keys", "/root/.ssh/authorized_keys"]
        # cloud-init (disable_root: true) gives root only a forced "log in as outband" command.
        for line in host.file("/root/.ssh/authorized_keys").content_string.splitlines():
            assert 'command="echo \'Please login as the user \\"outband\\"' in line, line
        assert "permitrootlogin no" in host.check_output("sshd -T")
        assert host.check_output("ls -A /usr/local/share/ca-certificates") == ""
        bundle = host.file("/etc/ssl/certs/ca-certificates.crt").content_string
        for extra in Path("/usr/local/share/ca-certificates").glob("*.crt"):  # the builder's proxy CAs
            body = "".join(line for line in extra.read_text().splitlines() if "-----" not in line)
            assert body[:200] not in bundle.replace("\n", ""), f"{extra.name} is trusted in the image"
        shadow = host.file("/etc/shadow").content_string
        assert all(line.split(":")[1].startswith(("*", "!")) for line in shadow.splitlines())
        assert not host.file("/usr/sbin/policy-rc.d").exists
        assert host.check_output("find /root /home -name '.*_history' -size +0") == ""
        assert not host.file("/etc/ssl/private/ssl-cert-snakeoil.key").exists
    assert host.file("/etc/machine-id").content_string.strip() not in ("", "uninitialized")  # set by this boot


TAMPERED = "/usr/local/lib/outband/contract.json"  # installed by 40-appliance.sh


def tamper(qcow2: Path, path: str, work: Path) -> None:
    """One byte of one file changed inside a qcow2, the way someone who altered an image would
    (its manifest and listing left as they were)."""
    from appliance import disk

    raw, root = work / "tamper.raw", work / "tamper-root"
    root.mkdir()
    subprocess.run(["qemu-img", "convert", "-O", "raw", qcow2, raw], check=True)
    subprocess.run(["mount", "-o", f"loop,offset={disk.PART_OFFSET}", raw, root], check=True)
    try:
        target = root / path.lstrip("/")
        text = target.read_text()
        assert "appliance configured" in text
        target.write_text(text.replace("appliance configured", "appliance Configured", 1))
    finally:
        subprocess.run(["umount", root], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow2], check=True)
    raw.unlink()


def test_bake_check_rebuilds_the_image_bit_for_bit_and_names_the_one_byte_changed_in_a_copy(
    baked, settings, tmp_path, record_property
):
    """`invoke bake --check` against a copy of the published image with one byte changed in one file
    that a provision script installed (its manifest and listing untouched). The rebuild runs every
    provision script again without the layer cache, into its own work tree and output (the
    downloaded debs and wheels reused): it must have the sha256 the image had before the change —
    two bakes, one sha256 — and the check must name exactly that file, with the changed line, read
    from the copy's own bytes rather than from the listing beside it."""
    original = baked["image"]
    before = hashlib.sha256(original.read_bytes()).hexdigest()
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    stem = original.name.removesuffix(".qcow2")
    for f in original.parent.glob(f"{stem}.*"):
        shutil.copy2(f, out / "images" / f.name)
    (out / "images/latest.json").write_text((original.parent / "latest.json").read_text())
    tamper(out / "images" / original.name, TAMPERED, tmp_path)

    env = {**os.environ, "INVOKE_OUTBAND_DIRS_OUTPUT": str(out)}
    layers = sorted(p.name for p in (settings.dirs.cache / "layers").iterdir())
    started = time.monotonic()
    result = invoke("bake", "--check", "--json", "--webclient", WEBCLIENT, check=False, timeout=1800, env=env)
    record_property("measured", f"bake --check {time.monotonic() - started:.0f} s")
    # The everyday bakes' layer cache is neither used nor changed by a check.
    assert sorted(p.name for p in (settings.dirs.cache / "layers").iterdir()) == layers
    assert result.returncode == 5, (result.stdout[-3000:], result.stderr[-3000:])
    rebuilt = re.search(r"the rebuild's sha256 is ([0-9a-f]{64})", result.stderr)
    assert rebuilt and rebuilt.group(1) == before, result.stderr[-3000:]
    assert "is not what its manifest recorded" in result.stderr
    differences = json.loads(result.stdout)
    assert [(d["path"], d["change"], d["what"], d["known"]) for d in differences] == [
        (TAMPERED, "changed", "sha256", "")
    ]
    lines = differences[0]["diff"].splitlines()
    changed = [line for line in lines if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]
    assert lines[0] == f"--- published{TAMPERED}" and lines[1] == f"+++ rebuilt{TAMPERED}"
    assert changed == ['-      "done": "appliance Configured",', '+      "done": "appliance configured",']


# A base-tree package Debian serves at two versions today (trixie's, and trixie-security's newer
# one): the older pinned must be what apt installs. Where that is no longer so, only apt is checked.
OLDER = {"libzstd1": ("1.5.7+dfsg-1+deb13u1", "1.5.7+dfsg-1")}


def test_a_bake_pinned_to_a_version_debian_no_longer_serves_fails_naming_it(baked, tmp_path):
    """`invoke bake --packages-from MANIFEST`: exactly the versions an earlier image recorded, or
    no image. Here the manifest asks for an apt Debian never served (and, while Debian serves two
    libzstd1, the older one): the bake stops after the base tree (mmdebstrap) naming apt alone —
    libzstd1 came at the pinned version, not the newer — before any provision script, and
    publishes nothing. (Pins Debian still serves, all of them: every `bake --check` above.)"""
    installed = baked["manifest"]["debian_packages"]
    pins = {**installed, "apt": "0.0-outband-test"}
    older = {n: old for n, (new, old) in OLDER.items() if installed.get(n) == new}
    pins.update(older)
    earlier = tmp_path / "earlier.manifest.json"
    earlier.write_text(json.dumps({**baked["manifest"], "debian_packages": pins}))
    out = tmp_path / "out"
    env = {**os.environ, "INVOKE_OUTBAND_DIRS_OUTPUT": str(out)}
    args = ("bake", "--packages-from", str(earlier), "--webclient", WEBCLIENT)
    result = invoke(*args, check=False, timeout=1200, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"1 pinned package version(s) (base tree): apt 0.0-outband-test (got {installed['apt']})" in result.stderr
    assert "hint:" in result.stderr and "snapshot.debian.org" in result.stderr
    assert "Provision" not in result.stderr
    assert not list(out.glob("images/*.qcow2"))
