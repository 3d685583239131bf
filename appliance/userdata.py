"""The user-data contract (operator → appliance): validation, jinja2 rendering, NoCloud seed.

The contract's schema and its shared constants live in one file, read here through
appliance/contract.py and on the appliance by first boot (the same JSON Schema on both sides):
images/files/usr/local/lib/outband/contract.json. The SSH host key and the operator's public key
travel in cloud-init's own keys (ssh_keys, ssh_authorized_keys), so cloud-init installs them before
sshd starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import idna
import jinja2
import pycdlib
import yaml

from appliance import contract as contract_file
from appliance import log
from appliance.errors import ExitStatus, die
from appliance.secrets import LaunchSecrets, SshKeyPair

TEMPLATES = Path(__file__).parent / "templates"
NAME = re.compile(contract_file.pattern("name"))
DOMAIN = re.compile(contract_file.pattern("domain"))


def invalid(message: str, hint: str) -> None:
    die(message, hint=hint, status=ExitStatus.USAGE)


def validate_name(name: str) -> str:
    if not NAME.match(name or ""):
        invalid(
            f"invalid appliance name {name!r}", "use 2-32 lowercase letters, digits and dashes, starting with a letter"
        )
    return name


def validate_domain(domain: str) -> str:
    """D as DNS and certificates spell it: an internationalised name becomes its A-label (punycode,
    IDNA 2008 with UTS #46 mapping, as browsers do), shown once; a trailing dot is dropped."""
    given = domain or ""
    name = given.strip().rstrip(".")
    with contextlib.suppress(idna.IDNAError):  # the pattern below refuses it with the usual hint
        name = idna.encode(name, uts46=True).decode() if name else name
    if not DOMAIN.match(name) or len(name) > 200:
        invalid(f"invalid domain {given!r}", "use a DNS name with at least two labels, e.g. chat.example.org")
    if name != given.rstrip(".").lower():
        log.info(f"domain {given!r} is {name} in DNS")
    return name


def validate(contract: dict[str, Any]) -> dict[str, Any]:
    """Check a contract completely before anything is started; one error names the first problem."""
    return contract_file.validate(contract)


def contract(
    name: str,
    domain: str,
    contact_email: str,
    acme_directory: str,
    acme_ca_pem: str | None,
    launch_secrets: LaunchSecrets,
    public_ip: str = "",
    private_ip: str = "",
    await_dns: bool = False,
    federation: tuple[str, ...] = (),
    open_federation: bool = False,
    federation_ca_pem: str | None = None,
    appliance_network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`await_dns`: first boot waits until the names resolve to the appliance before asking for the
    certificate (a cloud, where DNS records can only be made once the machine has its address).
    `federation`: the other server names this one federates with (its team); nobody else unless
    `open_federation`. `federation_ca_pem`: the only CA trusted for federation (the local target's
    ACME root; a cloud's appliances have publicly trusted certificates). `appliance_network`: the
    local target's network between appliances (appliance/localnet.py)."""
    team: dict[str, Any] = {"open": open_federation, "servers": sorted({domain, *federation})}
    if federation_ca_pem:
        team["ca_pem"] = federation_ca_pem
    extra = {"appliance_network": appliance_network} if appliance_network else {}
    return validate(
        {
            "schema": contract_file.SCHEMA_VERSION,
            "name": name,
            "domain": domain,
            "contact_email": contact_email,
            "acme": {"directory": acme_directory, "ca_pem": acme_ca_pem, "await_dns": await_dns},
            "public_ip": public_ip,
            "private_ip": private_ip,
            "secrets": launch_secrets.as_dict(),
            "federation": team,
            **extra,
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
        name=contract_["name"],
        contract=contract_,
        contract_path=contract_file.PATHS["contract"],
        host_key=host_key,
        operator_public_key=operator_public_key,
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
