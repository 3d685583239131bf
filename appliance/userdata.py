"""The user-data contract (operator → appliance): schema, validation, jinja2 rendering, NoCloud seed.

Schema v1 — the `launch.json` the appliance's first-boot unit reads:
    schema         1
    name           appliance name (hostname)
    domain         D: server_name; matrix.D, element.D, riot.D are derived
    contact_email  ACME account e-mail
    acme           {directory: https URL, ca_pem: PEM of the ACME API's CA or null}
    public_ip      the address clients reach (coturn external-ip), optional
    private_ip     the appliance's own address behind NAT, optional
    secrets        signing_key, macaroon, form, registration_shared, turn, db_password
The SSH host key and the operator's public key travel in cloud-init's own keys (ssh_keys,
ssh_authorized_keys), so cloud-init installs them before sshd starts.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import pycdlib
import yaml

from appliance.errors import ExitStatus, die
from appliance.secrets import LaunchSecrets, SshKeyPair

SCHEMA = 1
TEMPLATES = Path(__file__).parent / "templates"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN = re.compile(rf"^(?=.{{1,200}}$){_LABEL}(\.{_LABEL})+$")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
SIGNING_KEY = re.compile(r"^ed25519 a_[A-Za-z0-9]{4} [A-Za-z0-9+/]{43}$")
SECRET_FIELDS = ("signing_key", "macaroon", "form", "registration_shared", "turn", "db_password")


def invalid(message: str, hint: str) -> None:
    die(message, hint=hint, status=ExitStatus.USAGE)


def validate_name(name: str) -> str:
    if not NAME.match(name or ""):
        invalid(
            f"invalid appliance name {name!r}", "use 2-32 lowercase letters, digits and dashes, starting with a letter"
        )
    return name


def validate_domain(domain: str) -> str:
    if not DOMAIN.match(domain or ""):
        invalid(
            f"invalid domain {domain!r}", "use a lowercase DNS name with at least two labels, e.g. chat.example.org"
        )
    return domain


def validate(contract: dict[str, Any]) -> dict[str, Any]:
    """Check a contract completely before anything is started; one error names the first problem."""
    if contract.get("schema") != SCHEMA:
        invalid(f"user-data schema {contract.get('schema')!r} is not supported", f"this Outband writes schema {SCHEMA}")
    validate_name(contract.get("name", ""))
    validate_domain(contract.get("domain", ""))
    if not EMAIL.match(contract.get("contact_email") or ""):
        invalid(f"invalid contact e-mail {contract.get('contact_email')!r}", "set outband.contact_email")
    acme = contract.get("acme") or {}
    if not str(acme.get("directory", "")).startswith("https://"):
        invalid(f"ACME directory {acme.get('directory')!r} is not an https URL", "set outband.acme.directory")
    if acme.get("ca_pem") is not None and "BEGIN CERTIFICATE" not in acme["ca_pem"]:
        invalid("acme.ca_pem is not a PEM certificate", "pass the ACME server's CA certificate")
    for field in ("public_ip", "private_ip"):
        if contract.get(field):
            try:
                ipaddress.ip_address(contract[field])
            except ValueError:
                invalid(f"{field} {contract[field]!r} is not an IP address", "pass an IPv4 or IPv6 address")
    s = contract.get("secrets") or {}
    missing = [f for f in SECRET_FIELDS if not isinstance(s.get(f), str) or len(s[f]) < 16]
    if missing:
        invalid(f"user-data secrets missing or too short: {', '.join(missing)}", "generate them with appliance.secrets")
    if not SIGNING_KEY.match(s["signing_key"]):
        invalid("the Synapse signing key is not in Synapse's file format", "regenerate it")
    return contract


def contract(
    name: str,
    domain: str,
    contact_email: str,
    acme_directory: str,
    acme_ca_pem: str | None,
    launch_secrets: LaunchSecrets,
    public_ip: str = "",
    private_ip: str = "",
) -> dict[str, Any]:
    return validate(
        {
            "schema": SCHEMA,
            "name": name,
            "domain": domain,
            "contact_email": contact_email,
            "acme": {"directory": acme_directory, "ca_pem": acme_ca_pem},
            "public_ip": public_ip,
            "private_ip": private_ip,
            "secrets": launch_secrets.as_dict(),
        }
    )


def render(contract_: dict[str, Any], host_key: SshKeyPair, operator_public_key: str) -> str:
    """The cloud-config user-data; parsed back and compared before use, so a rendering bug can't boot."""
    validate(contract_)
    if not operator_public_key.startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-", "sk-ssh-ed25519")):
        invalid("the operator SSH public key is not an OpenSSH public key", "check outband's operator key file")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 -- renders YAML, not HTML
        keep_trailing_newline=True,
    )
    text = env.get_template("user-data.j2").render(
        name=contract_["name"], contract=contract_, host_key=host_key, operator_public_key=operator_public_key
    )
    parsed = yaml.safe_load(text)
    written = json.loads(parsed["write_files"][0]["content"])
    if (
        written != contract_
        or parsed["ssh_keys"]["ed25519_private"] != host_key.private_openssh
        or parsed["ssh_authorized_keys"] != [operator_public_key]
        or not text.startswith("#cloud-config\n")
    ):
        die("rendered user-data does not round-trip", hint="this is a bug in appliance/templates/user-data.j2")
    return text


def render_bare(name: str, host_key: SshKeyPair, operator_public_key: str) -> str:
    """User-data without a launch contract: SSH access only, first boot stays idle (image tests)."""
    validate_name(name)
    return "#cloud-config\n" + yaml.safe_dump(
        {
            "hostname": name,
            "ssh_keys": {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public_openssh},
            "ssh_authorized_keys": [operator_public_key],
        },
        sort_keys=False,
    )


def meta_data(name: str, instance_id: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {name}\n"


def write_seed(path: Path, user_data: str, meta: str) -> Path:
    """A NoCloud seed: an ISO 9660 volume labelled `cidata` holding user-data and meta-data."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for iso_name, name, content in (("/USERDATA.;1", "user-data", user_data), ("/METADATA.;1", "meta-data", meta)):
        data = content.encode()
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600: the seed holds secrets.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        iso.write_fp(f)
    iso.close()
    return path
