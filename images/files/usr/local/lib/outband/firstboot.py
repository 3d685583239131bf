#!/usr/bin/python3
"""Outband first boot: apply the launch contract, once.

cloud-init writes the contract (/etc/outband/launch.json, root 0600) from user-data; this unit
then: starts nginx for ACME http-01 and certbot in the background, writes each secret to its own
file (owner and mode per consumer), sets the database role's password (the schema is made at
bake time), renders the configs from the baked templates, starts Synapse, waits for the
certificate, switches nginx to TLS, starts coturn, and
finally removes every copy of the user-data it can and retires cloud-init (an appliance is
configured once; a reboot must not re-run it). Its outcome goes to the serial console too.
No secret is ever printed or passed on a command line.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
# The one contract file (installed beside this script): the launch contract's JSON Schema and the
# constants the operator's side uses too (appliance/contract.py reads the same file).
SHARED = json.loads((HERE / "contract.json").read_text())
CONSTANTS = SHARED["constants"]
PATHS = CONSTANTS["paths"]
CONTRACT = Path(PATHS["contract"])
MARKER = Path(PATHS["configured_marker"])
TEMPLATES = HERE / "templates"
SECRETS = Path(PATHS["secrets_dir"])
# coturn must never relay into these (anchors: synapse coturn docs, CVE-2020-26262).
DENIED_PEER_IPS = [
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.0.2.0-192.0.2.255",
    "192.88.99.0-192.88.99.255",
    "192.168.0.0-192.168.255.255",
    "198.18.0.0-198.19.255.255",
    "198.51.100.0-198.51.100.255",
    "203.0.113.0-203.0.113.255",
    "224.0.0.0-239.255.255.255",
    "240.0.0.0-255.255.255.255",
    "::1",
    "64:ff9b::-64:ff9b::ffff:ffff",
    "::ffff:0.0.0.0-::ffff:255.255.255.255",
    "100::-100::ffff:ffff:ffff:ffff",
    "2001::-2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
    "2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
]
# Every place cloud-init keeps user-data or the merged config (which holds the SSH host key).
USER_DATA_COPIES = [
    "/var/lib/cloud/instance/user-data.txt",
    "/var/lib/cloud/instance/user-data.txt.i",
    "/var/lib/cloud/instance/cloud-config.txt",
    "/var/lib/cloud/instance/obj.pkl",
    "/var/lib/cloud/instance/vendor-data.txt",
    "/var/lib/cloud/instance/vendor-data.txt.i",
    "/var/lib/cloud/instance/vendor-data2.txt",
    "/var/lib/cloud/instance/vendor-data2.txt.i",
    "/run/cloud-init/instance-data-sensitive.json",
    "/run/cloud-init/combined-cloud-config.json",
    "/var/lib/cloud/seed",
]


def say(message: str) -> None:
    print(CONSTANTS["console"]["prefix"] + message, flush=True)


def run(*argv: str, input: str | None = None, env: dict[str, str] | None = None, user: str | None = None) -> None:
    """argv as root, or as `user` (its own group only) without a PAM session (runuser's costs a
    second under emulation)."""
    say("running " + (f"(as {user}) " if user else "") + " ".join(argv))  # argv never holds a secret
    subprocess.run(
        argv,
        input=input,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )


def write(path: Path, content: str, owner: str = "root", group: str = "root", mode: int = 0o600) -> None:
    """Create with the final owner and mode before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchown(fd, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        os.fchmod(fd, mode)
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    tmp.replace(path)


def contract_problems(contract: dict) -> list[str]:
    """Where the contract breaks the shared schema, without its values (they may be secrets).
    jsonschema is Debian's python3-jsonschema, which cloud-init depends on."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SHARED["schema"], format_checker=jsonschema.FormatChecker())
    problems = []
    for error in validator.iter_errors(contract):
        why = error.message if error.validator == "required" else f"fails the schema's {error.validator!r} check"
        problems.append(f"{error.json_path} {why}")
    return sorted(problems)


def load_contract() -> dict:
    contract = json.loads(CONTRACT.read_text())
    problems = contract_problems(contract)
    if problems:
        raise SystemExit("the launch contract is not valid: " + "; ".join(problems))
    return contract


def names(domain: str) -> list[str]:
    return [prefix + domain for prefix in CONSTANTS["name_prefixes"]]


METADATA_PUBLIC_IPV4 = CONSTANTS["metadata"]["public_ipv4"]


def own_ipv4() -> str:
    """The address of the interface the default route leaves by (a netlink query: nothing is sent)."""
    routes = json.loads(
        subprocess.run(["ip", "-4", "-j", "route", "show", "default"], capture_output=True, text=True).stdout or "[]"
    )
    if not routes:
        return ""
    addresses = json.loads(
        subprocess.run(
            ["ip", "-4", "-j", "addr", "show", "dev", routes[0]["dev"]], capture_output=True, text=True
        ).stdout
        or "[]"
    )
    return next((a["local"] for link in addresses for a in link.get("addr_info", [])), "")


def discover_addresses(c: dict) -> None:
    """The public address (on a cloud known only once the machine exists: the metadata service,
    reachable by root only), and the machine's own address where it differs (behind a 1:1 NAT:
    coturn must know both to hand out relay addresses that work)."""
    discover_public_ip(c)
    if not c.get("private_ip"):
        own = own_ipv4()
        if own and own != c.get("public_ip"):
            c["private_ip"] = own
            say(f"this machine's own address is {own}, its public one {c.get('public_ip') or 'unknown'}")


def discover_public_ip(c: dict) -> None:
    if c.get("public_ip"):
        return
    import urllib.request  # here: only a cloud needs it, and its import costs seconds under emulation

    try:
        with urllib.request.urlopen(METADATA_PUBLIC_IPV4, timeout=2) as response:  # noqa: S310 -- a fixed http URL
            c["public_ip"] = response.read().decode().strip()
            say(f"public address from the metadata service: {c['public_ip']}")
    except OSError:
        say("no metadata service: coturn runs without external-ip")


def write_secrets(c: dict) -> None:
    s = c["secrets"]
    SECRETS.mkdir(parents=True, exist_ok=True)
    os.chown(SECRETS, 0, grp.getgrnam("synapse").gr_gid)
    SECRETS.chmod(0o750)
    write(SECRETS / "signing.key", s["signing_key"].strip() + "\n", "root", "synapse", 0o640)
    for name in ("macaroon", "form", "registration_shared", "turn"):
        write(SECRETS / name, s[name], "root", "synapse", 0o640)
    # libpq ignores a password file that its user does not own or that others can read.
    write(SECRETS / "pgpass", f"127.0.0.1:5432:synapse:synapse:{s['db_password']}\n", "synapse", "synapse", 0o600)
    # The case recorder's signing key, for the recorder alone (its unit starts only once this exists).
    write(Path(PATHS["recorder_keys"]) / "case.key", s["case_key"] + "\n", "outband-recorder", "outband-recorder")


def render_configs(c: dict, env: jinja2.Environment) -> None:
    d = c["domain"]
    values = {
        "domain": d,
        "public_ip": c.get("public_ip", ""),
        "private_ip": c.get("private_ip", ""),
        "ports": CONSTANTS["ports"],
        "relay": CONSTANTS["relay_ports"],
        # None: open federation; else the only server names Synapse federates with (its team's).
        "federation_whitelist": None if c["federation"]["open"] else c["federation"]["servers"],
        "federation_ca": str(FEDERATION_CA) if c["federation"].get("ca_pem") else None,
        # Synapse refuses to contact private addresses; the other appliances' are on the segment.
        "federation_allowed_ips": [str(ipaddress.ip_interface(c["appliance_network"]["address"]).network)]
        if c.get("appliance_network")
        else [],
    }
    if c["federation"].get("ca_pem"):
        write(FEDERATION_CA, c["federation"]["ca_pem"], "root", "synapse", 0o644)
    write(Path("/etc/synapse/log.yaml"), env.get_template("log.yaml.j2").render(values), "root", "synapse", 0o640)
    write(
        Path("/etc/turnserver.conf"),
        env.get_template("turnserver.conf.j2").render(
            values, turn_secret=c["secrets"]["turn"], denied_peer_ips=DENIED_PEER_IPS
        ),
        "root",
        "turnserver",
        0o640,
    )
    write(
        Path(PATHS["webclient_config"]),
        env.get_template("webclient-config.json.j2").render(values),
        "root",
        "root",
        0o644,
    )
    Path(PATHS["webclient_config"]).parent.chmod(0o755)
    Path("/etc/outband").chmod(0o711)
    # Last: its existence is what lets Synapse start (its unit's condition), and Synapse reads what
    # it names (log.yaml, the secrets) at once.
    write(
        Path(PATHS["homeserver_config"]),
        env.get_template("homeserver.yaml.j2").render(values),
        "root",
        "synapse",
        0o640,
    )


def render_site(c: dict, env: jinja2.Environment, tls: bool) -> None:
    site = Path("/etc/nginx/sites-available/outband.conf")
    text = env.get_template("nginx-site.conf.j2").render(domain=c["domain"], tls=tls, ports=CONSTANTS["ports"])
    write(site, text, mode=0o644)
    enabled = Path("/etc/nginx/sites-enabled/outband.conf")
    if not enabled.exists():
        enabled.symlink_to(site)
    if tls:  # TURN over TLS: nothing to serve on 5349 before the certificate exists
        write(
            Path("/etc/nginx/streams-enabled/outband-turns.conf"),
            env.get_template("nginx-turns.conf.j2").render(domain=c["domain"], ports=CONSTANTS["ports"]),
            mode=0o644,
        )


# The local target's segment between appliances (appliance/localnet.py says why it exists).
SEGMENT_NETWORK = Path("/etc/systemd/network/20-outband-appliances.network")
# cloud-init renders the uplink (qemu's user network) as 10-cloud-init-eth0.network; a drop-in adds to it.
UPLINK_DROPIN = Path(PATHS["uplink_dns_dropin"])
RESOLVED_DROPIN = Path("/etc/systemd/resolved.conf.d/outband-appliances.conf")
FEDERATION_CA = Path("/etc/synapse/federation-ca.pem")


def join_appliance_network(c: dict) -> None:
    """The second NIC gets its address on the segment, and the other appliances' names resolve
    there. systemd-resolved sends a name to the scopes whose routing domains match it, and every
    other name to the default-route scopes, the global one always among them. So the appliances'
    DNS is the uplink's, for their domains only (the uplink then routes nothing else), and the
    uplink's own DNS server becomes the global one, for everything else. Not the other way round:
    the appliances' DNS answers "no such record" for any name it was not told, and an answer from
    a default-route scope ends a lookup."""
    net = c.get("appliance_network")
    if not net:
        return
    write(
        SEGMENT_NETWORK,
        f"[Match]\nMACAddress={net['mac']}\n\n[Link]\nRequiredForOnline=no\n\n"
        f"[Network]\nAddress={net['address']}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
        mode=0o644,
    )
    routing = " ".join(f"~{d}" for d in net["domains"])
    write(
        UPLINK_DROPIN,
        f"[Network]\nDNS={net['resolver']}\nDomains={routing}\n\n[DHCPv4]\nUseDNS=no\n\n[IPv6AcceptRA]\nUseDNS=no\n",
        mode=0o644,
    )
    UPLINK_DROPIN.parent.chmod(0o755)
    write(RESOLVED_DROPIN, f"[Resolve]\nDNS={net['upstream']}\n", mode=0o644)
    run("networkctl", "reload")
    run("systemctl", "restart", "systemd-resolved.service")


DATABASE_WAIT_SECONDS = 120


def set_database_password(c: dict) -> None:
    """The role and its database are made at bake time (images/provision/25-synapse-db.sh), without
    a password: only this launch's password is set here."""
    deadline = time.monotonic() + DATABASE_WAIT_SECONDS
    while subprocess.run(["pg_isready", "-q", "-h", "/var/run/postgresql"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"PostgreSQL did not accept connections within {DATABASE_WAIT_SECONDS} s")
        time.sleep(0.5)
    password = c["secrets"]["db_password"].replace("'", "''")
    # The password is ours (URL-safe random, the schema's pattern) and quoted anyway; psql reads it
    # on stdin, not argv. ON_ERROR_STOP: a missing role is an error, not a notice.
    run(
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        "-",
        input=f"ALTER ROLE synapse WITH LOGIN PASSWORD '{password}';\n",
        user="postgres",
        env={"HOME": "/var/lib/postgresql"},
    )


DNS_WAIT_SECONDS = 15 * 60


def dns_a(name: str) -> list[str]:
    """What DNS says of a name (A records), asked through resolved without /etc/hosts (cloud-init
    maps this machine's own FQDN, matrix.D, to 127.0.1.1 there) and without its cache (a cached
    NXDOMAIN from a moment ago says nothing); the reason instead of addresses when it fails."""
    result = subprocess.run(
        ["resolvectl", "query", "--legend=no", "-4", "--synthesize=no", "--cache=no", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip().splitlines()
        return [f"({why[-1].split(': ', 1)[-1] if why else 'no answer'})"]
    return sorted(set(re.findall(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", result.stdout)))


def await_dns(c: dict) -> None:
    """Until every name resolves to this appliance's public address, before the certificate is asked
    for: a cloud's DNS records are made once the machine has an address, and a CA that sees a name
    missing (NXDOMAIN) fails the order and caches that answer (Let's Encrypt: up to a minute).
    Bounded, with back-off; each change of what DNS says is reported on the console."""
    wanted = c.get("public_ip")
    if not wanted:
        raise SystemExit("acme.await_dns needs this appliance's public address (none from the contract or metadata)")
    deadline, delay, last = time.monotonic() + DNS_WAIT_SECONDS, 2.0, None
    while True:
        seen = {name: dns_a(name) for name in names(c["domain"])}
        if all(v == [wanted] for v in seen.values()):
            say(f"DNS: every name resolves to {wanted}")
            return
        report = ", ".join(f"{n} → {' '.join(v)}" for n, v in seen.items() if v != [wanted])
        if report != last:
            say(f"{CONSTANTS['console']['progress']} waiting for DNS ({report})")
            last = report
        if time.monotonic() > deadline:
            raise SystemExit(f"DNS did not point every name at {wanted} within {DNS_WAIT_SECONDS // 60} min: {report}")
        time.sleep(delay)
        delay = min(delay * 1.5, 30.0)


CERTBOT_ATTEMPTS = 3


def certbot_command(c: dict) -> tuple[list[str], dict[str, str]]:
    """certbot's argv and the environment it needs on top of first boot's (written once: the
    private CA's certificate, if any)."""
    d = c["domain"]
    acme = c["acme"]
    env = {}
    if acme.get("ca_pem"):
        # A private ACME CA (the local target's pebble): trust its API's certificate for certbot only.
        write(Path(PATHS["acme_ca"]), acme["ca_pem"], mode=0o644)
        env["REQUESTS_CA_BUNDLE"] = PATHS["acme_ca"]
    argv = [
        "certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--no-eff-email",
        "--webroot",
        "-w",
        "/var/www/acme",
        "--cert-name",
        "outband",
        "--key-type",
        "ecdsa",
        # http-01 needs nginx serving the webroot: started (--no-block) before certbot, and waited
        # for here, after certbot's own start-up (seconds of imports under emulation). Kept for
        # renewals, where it is a no-op on a running nginx.
        "--pre-hook",
        "systemctl start nginx.service",
        "--server",
        acme["directory"],
        "-m",
        c["contact_email"],
    ]
    for name in names(d):
        argv += ["-d", name]
    return argv, env


class Certificate:
    """certbot in the background from the start of first boot: the certificate needs nothing of
    what first boot does meanwhile (secrets, database password, configs), and is the longest step
    left of a launch. Where the contract says so (a cloud, whose DNS records are made once the
    machine has an address), it first waits for DNS to point at this appliance."""

    def __init__(self, c: dict):
        self.c = c
        self.argv, self.env = certbot_command(c)
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._first_attempt, daemon=True)

    def start(self) -> Certificate:
        self.thread.start()
        return self

    def _first_attempt(self) -> None:
        try:
            if self.c["acme"].get("await_dns"):
                await_dns(self.c)
            say("running " + " ".join(self.argv))
            self.code = subprocess.run(self.argv, text=True, env={**os.environ, **self.env}, check=False).returncode
        except BaseException as e:  # re-raised in finish(), in first boot's own thread
            self.error = e

    def finish(self) -> None:
        """Wait for the first attempt; retry in the foreground (ACME CAs have transient failures)."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.code == 0:
            return
        for attempt in range(2, CERTBOT_ATTEMPTS + 1):
            time.sleep(5 * (attempt - 1))
            say(f"certbot failed; attempt {attempt} of {CERTBOT_ATTEMPTS}")
            try:
                run(*self.argv, env=self.env)
                return
            except subprocess.CalledProcessError:
                if attempt == CERTBOT_ATTEMPTS:
                    raise


def remove_user_data() -> None:
    for path in [str(CONTRACT), *USER_DATA_COPIES]:
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for inst in Path("/var/lib/cloud/instances").glob("*"):
        for name in (
            "user-data.txt",
            "user-data.txt.i",
            "cloud-config.txt",
            "obj.pkl",
            "vendor-data.txt",
            "vendor-data.txt.i",
        ):
            (inst / name).unlink(missing_ok=True)
    # Configured once: a reboot must not re-run cloud-init (it would, without its cached state).
    Path("/etc/cloud/cloud-init.disabled").write_text("Outband: configured at first boot\n")


def template_env(templates: Path = TEMPLATES) -> jinja2.Environment:
    """Strict: a value missing from the contract fails the render instead of writing an empty config."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 -- renders config files, not HTML
    )


# The launcher watches the serial console for these two lines (this unit's output goes to the
# console too): it learns the outcome without polling over SSH, which costs the guest CPU.
DONE = CONSTANTS["console"]["done"]
FAILED = CONSTANTS["console"]["failed"]


def configure() -> str:
    c = load_contract()
    # First: it reloads the uplink's configuration, which nothing may be using yet.
    join_appliance_network(c)
    discover_addresses(c)
    env = template_env()
    render_site(c, env, tls=False)
    # Started without waiting: nginx (for ACME http-01) comes up while certbot starts (its
    # pre-hook waits for nginx) and the database is prepared.
    run("systemctl", "start", "--no-block", "nginx.service")
    certificate = Certificate(c).start()
    write_secrets(c)
    # The role's password before Synapse's config: homeserver.yaml is what Synapse's unit (already
    # running on a launch, its wrapper waiting) starts Synapse on, any moment after it appears.
    set_database_password(c)
    render_configs(c, env)
    # Synapse's unit has been importing Synapse since early boot and starts it on this config
    # (synapse-start.py); this start only joins that job, or makes one where the boot's did not
    # run. The rest of its start runs while the certificate is obtained: it needs none.
    run("systemctl", "start", "--no-block", "synapse.service")
    certificate.finish()
    render_site(c, env, tls=True)
    run("nginx", "-t", "-q")
    # The same hook as every renewal (certbot runs it only on renewals): one nginx reload, now onto
    # the TLS site and TURN over TLS.
    run("/etc/letsencrypt/renewal-hooks/deploy/outband")
    MARKER.parent.mkdir(parents=True, exist_ok=True)
    MARKER.write_text(c["domain"] + "\n")
    # Returns once Synapse has told systemd it is ready (Type=notify) or failed.
    # The case recorder (ordered after Synapse) registers its account in its start: a configured
    # appliance is one that records from the moment a room invites it.
    run("systemctl", "start", "synapse.service", "coturn.service", "outband-recorder.service")
    remove_user_data()
    return c["domain"]


def main() -> int:
    started = time.monotonic()
    try:
        domain = configure()
    except BaseException as e:
        # One line naming the cause: no step puts a secret in an exception's text (argv never
        # holds one), so this is safe on a console.
        say(f"{FAILED} {type(e).__name__}: {e}")
        raise
    say(f"{DONE} for {domain} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
