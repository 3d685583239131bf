"""Checks on the appliance itself, with pytest-testinfra over SSH (pinned host key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SERVICES = ["synapse", "nginx", "coturn", "postgresql@17-main", "nftables", "ssh", "outband-firstboot"]


@pytest.mark.parametrize("unit", SERVICES)
def test_service_enabled_and_running(host, unit):
    service = host.service(unit)
    assert service.is_running
    if unit != "postgresql@17-main":  # a template instance, pulled in by postgresql.service
        assert service.is_enabled


@pytest.mark.parametrize(
    ("unit", "user"), [("synapse", "synapse"), ("coturn", "turnserver"), ("postgresql@17-main", "postgres")]
)
def test_services_run_as_their_own_users(host, unit, user):
    pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
    assert int(pid) > 0
    assert host.check_output(f"ps -o user= -p {pid}").strip() == user


def test_synapse_is_sandboxed(host):
    props = host.check_output("systemctl show synapse -p NoNewPrivileges -p ProtectSystem -p PrivateTmp")
    assert "NoNewPrivileges=yes" in props
    assert "ProtectSystem=strict" in props
    assert "PrivateTmp=yes" in props


def test_database_and_synapse_listen_on_localhost_only(host):
    listening = host.check_output("ss -Hltn")
    local = [line.split()[3] for line in listening.splitlines()]
    assert "127.0.0.1:5432" in local
    assert "127.0.0.1:8008" in local
    for addr in local:
        port = addr.rsplit(":", 1)[1]
        if port in ("5432", "8008"):
            assert addr.startswith(("127.0.0.1:", "[::1]:")), addr


def test_ports_that_listen_publicly_are_the_designed_ones(host):
    public = set()
    for line in host.check_output("ss -Hltnu").splitlines():
        addr = line.split()[4]
        host_part, port = addr.rsplit(":", 1)
        if not host_part.startswith(("127.", "[::1]", "[::ffff:127.")) and host_part != "127.0.0.53%lo":
            public.add(int(port))
    allowed = {22, 80, 443, 8448, 3478, 5349}
    assert public - allowed - set(range(49152, 49172)) <= {68, 546}  # DHCP clients only (no LLMNR 5355)


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        ("/etc/synapse/secrets/signing.key", "root", "synapse", 0o640),
        ("/etc/synapse/secrets/macaroon", "root", "synapse", 0o640),
        ("/etc/synapse/secrets/form", "root", "synapse", 0o640),
        ("/etc/synapse/secrets/registration_shared", "root", "synapse", 0o640),
        ("/etc/synapse/secrets/turn", "root", "synapse", 0o640),
        ("/etc/synapse/secrets/pgpass", "synapse", "synapse", 0o600),
        ("/etc/synapse/homeserver.yaml", "root", "synapse", 0o640),
        ("/etc/turnserver.conf", "root", "turnserver", 0o640),
        ("/etc/ssh/ssh_host_ed25519_key", "root", "root", 0o600),
    ],
)
def test_secret_files_owners_and_modes(host, path, owner, group, mode):
    with host.sudo():  # the operator user cannot even traverse /etc/synapse
        f = host.file(path)
        assert f.exists
        assert (f.user, f.group, f.mode) == (owner, group, mode)


def test_injected_secrets_are_the_ones_in_use(host, facts):
    secrets = json.loads(Path(facts["secrets_file"]).read_text())
    with host.sudo():
        assert host.file("/etc/synapse/secrets/turn").content_string == secrets["turn"]
        assert f"static-auth-secret={secrets['turn']}\n" in host.file("/etc/turnserver.conf").content_string
        assert host.file("/etc/synapse/secrets/signing.key").content_string.strip() == secrets["signing_key"]


def test_synapse_config(host, domain):
    with host.sudo():
        config = host.file("/etc/synapse/homeserver.yaml").content_string
    assert "enable_registration: false" in config
    assert "report_stats: false" in config
    assert "turn_allow_guests: false" in config
    assert f'"turn:matrix.{domain}:3478?transport=udp"' in config
    assert f'"turns:matrix.{domain}:5349?transport=tcp"' in config
    assert "registration_shared_secret:" not in config  # only the *_path form


def test_coturn_is_hardened(host):
    with host.sudo():
        conf = host.file("/etc/turnserver.conf").content_string
    for line in (
        "use-auth-secret",
        "no-cli",
        "no-tcp-relay",
        "no-multicast-peers",
        "no-tlsv1",
        "no-tlsv1_1",
        "denied-peer-ip=169.254.0.0-169.254.255.255",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "user-quota=12",
        "total-quota=1200",
    ):
        assert f"\n{line}\n" in conf, line


def test_firewall_default_drop(host):
    with host.sudo():
        ruleset = host.check_output("nft list chain inet outband input")
        output = host.check_output("nft list chain inet outband output")
    assert "policy drop" in ruleset
    assert "169.254.169.254" in output and "skuid != 0" in output


def test_no_user_data_left(host):
    with host.sudo():
        for path in (
            "/etc/outband/launch.json",
            "/var/lib/cloud/instance/user-data.txt",
            "/var/lib/cloud/instance/obj.pkl",
            "/run/cloud-init/instance-data-sensitive.json",
        ):
            assert not host.file(path).exists, path
        # Any surviving copy of the contract holds its JSON key "db_password" (quotes included; no
        # file or command here has it). The split quoting keeps this very command line, which sudo
        # logs to the journal, from matching itself.
        hits = host.run("""grep -rlsF '"db''_password"' /var/lib/cloud /run/cloud-init /etc/outband /var/log /tmp""")
    assert hits.stdout.strip() == ""
    assert host.file("/etc/cloud/cloud-init.disabled").exists


def test_sshd_is_key_only(host):
    with host.sudo():
        effective = host.check_output("sshd -T")
    assert "passwordauthentication no" in effective
    assert "permitrootlogin no" in effective
    assert "kbdinteractiveauthentication no" in effective


def test_no_compiler_in_the_image(host):
    for pkg in ("gcc", "cpp", "make", "python3-dev"):
        assert not host.package(pkg).is_installed


def test_nothing_failed(host):
    assert host.check_output("systemctl --failed --no-legend --plain") == ""
