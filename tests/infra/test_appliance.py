"""Checks on the appliance itself, with pytest-testinfra over SSH (pinned host key).

Every remote command costs the emulated guest a session, a shell and often sudo (~0.3-1 s each
under TCG): everything the checks below read is gathered as root in ONE session by the `probe`
fixture (python3 on the appliance runs the commands and reads the files, and returns JSON); each
check then asserts on its part.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path

import pytest

SERVICES = [
    "synapse",
    "nginx",
    "coturn",
    "postgresql@17-main",
    "nftables",
    "ssh",
    "outband-firstboot",
    "outband-recorder",
    "auditd",
    "fail2ban",
]
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
    # The case recorder's: the case key (from the contract), its store's key and its access token.
    ("/etc/outband/recorder/case.key", "outband-recorder", "outband-recorder", "600"),
    ("/etc/outband/recorder/store.key", "outband-recorder", "outband-recorder", "600"),
    ("/var/lib/outband/recorder/session.json", "outband-recorder", "outband-recorder", "600"),
    ("/var/lib/outband/case", "outband-recorder", "outband-recorder", "750"),
]
# First boot's "configured once" marker (it holds the domain): on a later boot its unit is skipped.
FIRST_BOOT_MARKER = "/var/lib/outband/configured"
ROOT_ONLY_READS = [
    FIRST_BOOT_MARKER,
    "/etc/synapse/secrets/turn",
    "/etc/synapse/secrets/signing.key",
    "/etc/synapse/homeserver.yaml",
    "/etc/turnserver.conf",
    "/sys/kernel/security/lsm",
    "/etc/outband/recorder/case.key",
]
COMPILERS = ("gcc", "cpp", "make", "python3-dev")
# Any surviving copy of the contract holds its JSON key "db_password" (quotes included; no file or
# command here has it: the split quoting keeps this script, should it be logged, from matching).
USER_DATA_SCAN = (
    "for p in /etc/outband/launch.json /var/lib/cloud/instance/user-data.txt /var/lib/cloud/instance/obj.pkl "
    '/run/cloud-init/instance-data-sensitive.json; do [ ! -e "$p" ] || echo "left: $p"; done; '
    """grep -rlsF '"db''_password"' /var/lib/cloud /run/cloud-init /etc/outband /var/log /tmp; """
    "[ -e /etc/cloud/cloud-init.disabled ] || echo 'cloud-init is not retired'"
)
COMMANDS = {
    "units": "systemctl show -p Id -p ActiveState -p SubState -p UnitFileState -p MainPID -p ConditionResult "
    "-p NoNewPrivileges -p ProtectSystem -p PrivateTmp " + " ".join(SERVICES),
    "stat": "stat -c '%n %U %G %a' " + " ".join(p for p, *_ in SECRET_FILES),
    "processes": "ps -eo pid=,user=",
    # Twice, 2 s apart, with the owning process: a UDP client socket (a DNS query on an unconnected
    # port) is listed while it waits for its answer; a listener is there both times.
    "listening": "ss -Hltnup; sleep 2; echo ---; ss -Hltnup",
    "nft_input": "nft list chain inet outband input",
    "nft_output": "nft list chain inet outband output",
    "sshd": "sshd -T",
    "packages": "dpkg-query -W -f '${Package} ${Status}\\n' " + " ".join(COMPILERS),
    "user_data": USER_DATA_SCAN,
    "failed": "systemctl --failed --no-legend --plain",
    "audit_rules": "auditctl -l",
    "jails": "fail2ban-client status",
}
# Runs on the appliance as root: each command through sh, all at once (the guest has two vCPUs and
# each command mostly waits on the emulated disk the first time), each file read (None when it
# cannot be: the check that reads it fails, not every check); one JSON answer.
PROBE = """
import json, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
def run(command):
    r = subprocess.run(command, shell=True, capture_output=True, text=True)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr}
commands, files = json.loads(sys.argv[1])
with ThreadPoolExecutor(max_workers=len(commands)) as pool:
    results = dict(zip(commands, pool.map(run, commands.values())))
print(json.dumps({"run": results, "files": {p: read(p) for p in files}}))
"""


@pytest.fixture(scope="module")
def probe(host) -> dict:
    # Base64: the payload crosses ssh and sudo (which logs its command line) as one opaque word.
    payload = base64.b64encode(json.dumps([COMMANDS, ROOT_ONLY_READS]).encode()).decode()
    script = f"import base64, sys; sys.argv[1] = base64.b64decode(sys.argv[1]).decode(); exec({PROBE!r})"
    with host.sudo():
        return json.loads(host.check_output(f"python3 -c {shlex.quote(script)} {payload}"))


def output(probe: dict, name: str) -> str:
    result = probe["run"][name]
    assert result["rc"] == 0, f"{COMMANDS[name]!r} failed: {result['err'].strip()}"
    return result["out"]


@pytest.fixture(scope="module")
def units(probe) -> dict[str, dict[str, str]]:
    """systemd's view of every service checked here."""
    blocks = output(probe, "units").split("\n\n")
    shown = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in blocks]
    return {u["Id"].removesuffix(".service"): u for u in shown}


@pytest.fixture(scope="module")
def stats(probe) -> dict[str, tuple[str, str, str]]:
    """Owner, group and mode of the secret files (read as root: the operator cannot even traverse
    /etc/synapse). stat reports the files it finds even when one is missing: that one's check fails."""
    lines = probe["run"]["stat"]["out"].splitlines()
    return {path: tuple(rest) for path, *rest in (line.split() for line in lines)}


@pytest.fixture(scope="module")
def root_files(probe) -> dict[str, str]:
    return probe["files"]


@pytest.mark.parametrize("unit", SERVICES)
def test_service_enabled_and_running(units, root_files, domain, unit):
    if unit == "outband-firstboot" and units[unit]["ActiveState"] == "inactive":
        # A later boot of a configured appliance (a reboot): first boot ran once, for this domain
        # (its marker), and this boot skipped it by its condition.
        assert units[unit]["ConditionResult"] == "no"
        assert (root_files[FIRST_BOOT_MARKER] or "").strip() == domain
    else:
        assert units[unit]["ActiveState"] == "active"
        # Oneshots stay "exited" (first boot, the firewall load); every other one runs.
        assert units[unit]["SubState"] == ("exited" if unit in ONESHOTS else "running")
    if unit != "postgresql@17-main":  # a template instance, pulled in by postgresql.service
        assert units[unit]["UnitFileState"] == "enabled"


@pytest.mark.parametrize(
    ("unit", "user"),
    [
        ("synapse", "synapse"),
        ("coturn", "turnserver"),
        ("postgresql@17-main", "postgres"),
        ("outband-recorder", "outband-recorder"),
    ],
)
def test_services_run_as_their_own_users(probe, units, unit, user):
    pid = units[unit]["MainPID"]
    assert int(pid) > 0
    owners = dict(line.split() for line in output(probe, "processes").splitlines())
    assert owners[pid] == user


@pytest.mark.parametrize("unit", ["synapse", "outband-recorder", "fail2ban"])
def test_long_running_python_services_are_sandboxed(units, unit):
    assert units[unit]["NoNewPrivileges"] == "yes"
    assert units[unit]["ProtectSystem"] == "strict"
    assert units[unit]["PrivateTmp"] in ("yes", "disconnected")


def listeners(probe) -> dict[str, str]:
    """Sockets listening in both samples: "proto address:port" → the process that owns it.
    (ss -Hltnup: netid state recv-q send-q local-address peer-address process)"""
    first, _, second = output(probe, "listening").partition("---")

    def sample(text: str) -> dict[str, str]:
        rows = [line.split() for line in text.splitlines() if line.strip()]
        return {f"{row[0]} {row[4]}": " ".join(row[6:]) for row in rows}

    before, after = sample(first), sample(second)
    return {socket: after[socket] for socket in before if socket in after}


def test_database_and_synapse_listen_on_localhost_only(probe):
    local = [socket.split()[1] for socket in listeners(probe) if socket.startswith("tcp")]
    assert "127.0.0.1:5432" in local
    assert "127.0.0.1:8008" in local
    for addr in local:
        port = addr.rsplit(":", 1)[1]
        if port in ("5432", "8008"):
            assert addr.startswith(("127.0.0.1:", "[::1]:")), addr


def test_ports_that_listen_publicly_are_the_designed_ones(probe):
    public: dict[int, str] = {}
    for socket, process in listeners(probe).items():
        host_part, port = socket.split()[1].rsplit(":", 1)
        if not host_part.startswith(("127.", "[::1]", "[::ffff:127.")) and host_part != "127.0.0.53%lo":
            public[int(port)] = f"{socket} {process}"
    designed = {22, 80, 443, 8448, 3478, 5349} | set(range(49152, 49172)) | {68, 546}  # + DHCP clients (no LLMNR)
    assert {port: who for port, who in public.items() if port not in designed} == {}


@pytest.mark.parametrize(("path", "owner", "group", "mode"), SECRET_FILES)
def test_secret_files_owners_and_modes(stats, path, owner, group, mode):
    assert stats.get(path) == (owner, group, mode), f"{path} missing or wrong owner/mode"


def test_injected_secrets_are_the_ones_in_use(root_files, facts):
    secrets = json.loads(Path(facts["secrets_file"]).read_text())
    assert root_files["/etc/synapse/secrets/turn"] == secrets["turn"]
    assert f"static-auth-secret={secrets['turn']}\n" in root_files["/etc/turnserver.conf"]
    assert root_files["/etc/synapse/secrets/signing.key"].strip() == secrets["signing_key"]
    assert root_files["/etc/outband/recorder/case.key"].strip() == secrets["case_key"]


def test_synapse_config(root_files, domain, federation):
    config = root_files["/etc/synapse/homeserver.yaml"]
    listed = "federation_domain_whitelist: " + json.dumps(federation["servers"])
    assert (listed in config) is not federation["open"]
    assert ("federation_domain_whitelist" in config) is not federation["open"]
    # The local target's ACME root is trusted for federation only; a cloud's certificates are
    # publicly trusted, and nothing replaces the system's CAs there.
    assert ("federation_custom_ca_list" in config) is bool(federation.get("ca_pem"))
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
        "no-tls",  # TLS on 5349 is nginx's (TLS 1.3), coturn's own cannot offer it
        "no-dtls",
        "denied-peer-ip=169.254.0.0-169.254.255.255",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "user-quota=12",
        "total-quota=1200",
    ):
        assert f"\n{line}\n" in conf, line


def test_firewall_default_drop(probe):
    assert "policy drop" in output(probe, "nft_input")
    egress = output(probe, "nft_output")
    assert "169.254.169.254" in egress and "skuid != 0" in egress


def test_apparmor_and_yama_are_active(root_files):
    # The local target names the kernel's security modules on its command line (without the BPF
    # LSM): the ones that confine and restrict must still be there.
    active = root_files["/sys/kernel/security/lsm"].strip().split(",")
    assert {"apparmor", "yama", "landlock", "lockdown"} <= set(active)


def test_no_user_data_left(probe):
    found = probe["run"]["user_data"]
    assert found["out"].strip() == ""
    assert found["err"].strip() == ""


def test_sshd_is_key_only(probe):
    effective = output(probe, "sshd")
    assert "passwordauthentication no" in effective
    assert "permitrootlogin no" in effective
    assert "kbdinteractiveauthentication no" in effective


def test_no_compiler_in_the_image(probe):
    # dpkg-query exits 1 when a name is unknown to it: that too means not installed.
    packages = probe["run"]["packages"]["out"].splitlines()
    assert [line for line in packages if line.endswith(" install ok installed")] == []
    assert len(packages) + probe["run"]["packages"]["err"].count("no packages found") == len(COMPILERS)


def test_nothing_failed(probe):
    assert output(probe, "failed").strip() == ""


def test_the_audit_rules_for_secrets_and_configs_are_loaded(probe):
    rules = output(probe, "audit_rules")
    assert "dir=/etc/synapse/secrets" in rules and "key=outband-secret-read" in rules
    assert "path=/etc/ssh/sshd_config" in rules and "key=outband-config" in rules


def test_failed_ssh_and_matrix_sign_ins_are_watched_for_bans(probe):
    jails = output(probe, "jails")
    assert re.search(r"Jail list:\s+sshd, synapse-login\s*$", jails, re.M), jails
