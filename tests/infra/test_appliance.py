"""Checks on the appliance itself, with pytest-testinfra over SSH (pinned host key).

Every remote command costs the emulated guest a session, a shell and often sudo (seconds under
TCG): facts that several checks read are fetched once per run, by the session fixtures below.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

SERVICES = ["synapse", "nginx", "coturn", "postgresql@17-main", "nftables", "ssh", "outband-firstboot"]
ONESHOTS = {"outband-firstboot", "nftables"}
SECRET_FILES = [
    ("/etc/synapse/secrets/signing.key", "root", "synapse", "640"),
    ("/etc/synapse/secrets/macaroon", "root", "synapse", "640"),
    ("/etc/synapse/secrets/form", "root", "synapse", "640"),
    ("/etc/synapse/secrets/registration_shared", "root", "synapse", "640"),
    ("/etc/synapse/secrets/turn", "root", "synapse", "640"),
    ("/etc/synapse/secrets/pgpass", "synapse", "synapse", "600"),
    ("/etc/synapse/homeserver.yaml", "root", "synapse", "640"),
    ("/etc/turnserver.conf", "root", "turnserver", "640"),
    ("/etc/ssh/ssh_host_ed25519_key", "root", "root", "600"),
]
ROOT_ONLY_READS = [
    "/etc/synapse/secrets/turn",
    "/etc/synapse/secrets/signing.key",
    "/etc/synapse/homeserver.yaml",
    "/etc/turnserver.conf",
]


@pytest.fixture(scope="module")
def units(host) -> dict[str, dict[str, str]]:
    """systemd's view of every service checked here, in one command."""
    out = host.check_output(
        "systemctl show -p Id -p ActiveState -p SubState -p UnitFileState -p MainPID " + " ".join(SERVICES)
    )
    shown = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in out.split("\n\n")]
    return {u["Id"].removesuffix(".service"): u for u in shown}


@pytest.fixture(scope="module")
def stats(host) -> dict[str, tuple[str, str, str]]:
    """Owner, group and mode of the secret files, read as root (the operator cannot even traverse
    /etc/synapse) in one command."""
    paths = " ".join(p for p, *_ in SECRET_FILES)
    with host.sudo():
        out = host.run(f"stat -c '%n %U %G %a' {paths}")
    return {path: tuple(rest) for path, *rest in (line.split() for line in out.stdout.splitlines())}


@pytest.fixture(scope="module")
def root_files(host) -> dict[str, str]:
    """Contents of root-only files that several checks read, in one command."""
    reader = "import json, sys; print(json.dumps({p: open(p).read() for p in sys.argv[1:]}))"
    with host.sudo():
        return json.loads(host.check_output(f"python3 -c {shlex.quote(reader)} {' '.join(ROOT_ONLY_READS)}"))


@pytest.mark.parametrize("unit", SERVICES)
def test_service_enabled_and_running(units, unit):
    assert units[unit]["ActiveState"] == "active"
    # Oneshots stay "exited" (first boot, the firewall load); every other one runs.
    assert units[unit]["SubState"] == ("exited" if unit in ONESHOTS else "running")
    if unit != "postgresql@17-main":  # a template instance, pulled in by postgresql.service
        assert units[unit]["UnitFileState"] == "enabled"


@pytest.mark.parametrize(
    ("unit", "user"), [("synapse", "synapse"), ("coturn", "turnserver"), ("postgresql@17-main", "postgres")]
)
def test_services_run_as_their_own_users(host, units, unit, user):
    pid = int(units[unit]["MainPID"])
    assert pid > 0
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


@pytest.mark.parametrize(("path", "owner", "group", "mode"), SECRET_FILES)
def test_secret_files_owners_and_modes(stats, path, owner, group, mode):
    assert stats.get(path) == (owner, group, mode), f"{path} missing or wrong owner/mode"


def test_injected_secrets_are_the_ones_in_use(root_files, facts):
    secrets = json.loads(Path(facts["secrets_file"]).read_text())
    assert root_files["/etc/synapse/secrets/turn"] == secrets["turn"]
    assert f"static-auth-secret={secrets['turn']}\n" in root_files["/etc/turnserver.conf"]
    assert root_files["/etc/synapse/secrets/signing.key"].strip() == secrets["signing_key"]


def test_synapse_config(root_files, domain):
    config = root_files["/etc/synapse/homeserver.yaml"]
    assert "enable_registration: false" in config
    assert "report_stats: false" in config
    assert "turn_allow_guests: false" in config
    assert f'"turn:matrix.{domain}:3478?transport=udp"' in config
    assert f'"turns:matrix.{domain}:5349?transport=tcp"' in config
    assert "registration_shared_secret:" not in config  # only the *_path form


def test_coturn_is_hardened(root_files):
    conf = root_files["/etc/turnserver.conf"]
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
        both = host.check_output(
            "sh -c 'nft list chain inet outband input; echo =====; nft list chain inet outband output'"
        )
    ruleset, output = both.split("=====")
    assert "policy drop" in ruleset
    assert "169.254.169.254" in output and "skuid != 0" in output


def test_no_user_data_left(host):
    # Any surviving copy of the contract holds its JSON key "db_password" (quotes included; no
    # file or command here has it). The split quoting keeps this very command line, which sudo
    # logs to the journal, from matching itself.
    script = (
        "for p in /etc/outband/launch.json /var/lib/cloud/instance/user-data.txt /var/lib/cloud/instance/obj.pkl "
        '/run/cloud-init/instance-data-sensitive.json; do [ ! -e "$p" ] || echo "left: $p"; done; '
        """grep -rlsF '"db''_password"' /var/lib/cloud /run/cloud-init /etc/outband /var/log /tmp; """
        "[ -e /etc/cloud/cloud-init.disabled ] || echo 'cloud-init is not retired'"
    )
    with host.sudo():
        found = host.run(f"sh -c {shlex.quote(script)}")
    assert found.stdout.strip() == ""
    assert found.stderr.strip() == ""


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
