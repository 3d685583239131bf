"""The one contract file, read on the operator's side: the launch contract's schema and the shared constants.

The file itself is images/files/usr/local/lib/outband/contract.json; the image installs it at the
same path, where first boot validates the contract with the same schema (jsonschema on both sides:
Debian's python3-jsonschema comes with cloud-init). Nothing here or there types the constants again.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from appliance.config import IMAGES
from appliance.errors import ExitStatus, die

FILE = IMAGES / "files/usr/local/lib/outband/contract.json"


@functools.cache
def _raw() -> dict[str, Any]:
    return json.loads(FILE.read_text())


def constants() -> dict[str, Any]:
    return _raw()["constants"]


def schema() -> dict[str, Any]:
    return _raw()["schema"]


SCHEMA_VERSION: int = constants()["schema_version"]
PORTS: dict[str, int] = constants()["ports"]
RELAY_PORTS = range(constants()["relay_ports"]["min"], constants()["relay_ports"]["max"] + 1)
SSH_USER: str = constants()["ssh_user"]
PATHS: dict[str, str] = constants()["paths"]
SECRET_NAMES: tuple[str, ...] = tuple(constants()["secret_names"])
CONSOLE_DONE = constants()["console"]["prefix"] + constants()["console"]["done"]
CONSOLE_FAILED = constants()["console"]["prefix"] + constants()["console"]["failed"]
CONSOLE_PROGRESS = constants()["console"]["prefix"] + constants()["console"]["progress"]


def names(domain: str) -> list[str]:
    """D, matrix.D, element.D, riot.D: one certificate and one set of DNS records cover all."""
    return [prefix + domain for prefix in constants()["name_prefixes"]]


def pattern(field: str) -> str:
    """A top-level field's pattern (name, domain, contact_email): one rule for CLI input and the contract."""
    return schema()["properties"][field]["pattern"]


@dataclass(frozen=True)
class Problem:
    where: str  # a JSON path, e.g. $.secrets.turn
    why: str  # never holds the value: it may be a secret


def problems(contract: dict[str, Any]) -> list[Problem]:
    """Every way a contract breaks the schema, described without its values (secrets stay out of logs)."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    found = []
    for error in sorted(validator.iter_errors(contract), key=lambda e: list(e.absolute_path)):
        if error.validator == "required":
            why = error.message  # "'x' is a required property": names the key, not a value
        elif error.validator == "additionalProperties":
            why = "has fields the schema does not know"
        elif error.validator == "const":
            why = f"must be {error.validator_value!r}"
        else:
            why = f"fails the schema's {error.validator!r} check"
        found.append(Problem(error.json_path, why))
    return found


def validate(contract: dict[str, Any]) -> dict[str, Any]:
    """Raise one user-facing error naming the first problem; return the contract when it is valid."""
    found = problems(contract)
    if found:
        first = found[0]
        die(
            f"launch contract: {first.where} {first.why}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""),
            hint=f"the schema is {FILE.relative_to(IMAGES.parent)}",
            status=ExitStatus.USAGE,
        )
    return contract


def installed_path() -> Path:
    """Where the image keeps this file (the appliance's scripts read it there)."""
    return Path("/") / FILE.relative_to(IMAGES / "files")
