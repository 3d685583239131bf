"""What an image holds: a CycloneDX 1.5 SBOM (Debian packages, wheels, web client) from the tree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from appliance.run import run
from appliance.webclient import WebClient

_REQ = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


DPKG_FORMAT = "${Package}\t${Version}\t${Architecture}\n"


def parse_dpkg(text: str) -> list[dict[str, str]]:
    """dpkg-query -W -f DPKG_FORMAT output → sorted package records."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return [{"name": n, "version": v, "arch": a} for n, v, a in sorted(rows)]


def debian_packages(tree: Path) -> list[dict[str, str]]:
    out = run(
        ["chroot", tree, "dpkg-query", "-W", "-f", DPKG_FORMAT],
        what="dpkg-query",
        capture=True,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    return parse_dpkg(out)


def locked_wheels(lock_file: Path) -> list[dict[str, Any]]:
    """Name, version and allowed sha256 hashes of every pinned wheel (from the lock file)."""
    wheels: list[dict[str, Any]] = []
    for block in re.split(r"\n(?=\S)", lock_file.read_text()):
        match = _REQ.match(block)
        if match:
            wheels.append({"name": match.group(1).lower(), "version": match.group(2), "sha256": _HASH.findall(block)})
    return sorted(wheels, key=lambda w: w["name"])


# Each venv of the image and its lock (images/lock/NAME.txt).
VENVS = {"synapse": "opt/synapse", "recorder": "opt/recorder"}


def installed_wheels(tree: Path, venv: str = "opt/synapse") -> dict[str, str]:
    """What pip actually installed in one venv (name → version), from the dist-info folders."""
    found = {}
    for dist in tree.glob(f"{venv}/lib/python3*/site-packages/*.dist-info"):
        name, _, version = dist.name.removesuffix(".dist-info").rpartition("-")
        found[name.lower().replace("_", "-")] = version
    return found


def cyclonedx(
    image_name: str,
    recipe_hash: str,
    debs: list[dict[str, str]],
    wheels: list[dict[str, Any]],
    web: WebClient,
    suite_version: str,
) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    for d in debs:
        components.append(
            {
                "type": "library",
                "name": d["name"],
                "version": d["version"],
                "purl": f"pkg:deb/debian/{d['name']}@{d['version']}?arch={d['arch']}&distro=debian-{suite_version}",
            }
        )
    for w in {(w["name"], w["version"]): w for w in wheels}.values():  # a wheel both venvs pin, once
        components.append(
            {
                "type": "library",
                "name": w["name"],
                "version": w["version"],
                "purl": f"pkg:pypi/{w['name']}@{w['version']}",
                "hashes": [{"alg": "SHA-256", "content": h} for h in w["sha256"]],
            }
        )
    for c in web.components:
        entry: dict[str, Any] = {
            "type": "application" if c["name"] in ("element-web",) else "library",
            "name": c["name"],
            "version": c["version"],
        }
        if "sha256" in c:
            entry["hashes"] = [{"alg": "SHA-256", "content": c["sha256"]}]
            entry["purl"] = f"pkg:generic/{c['name']}@{c['version']}"
        else:
            entry["purl"] = f"pkg:npm/{c['name'].replace('@', '%40')}@{c['version']}"
            if c.get("integrity"):
                entry["properties"] = [
                    {"name": "npm:integrity", "value": c["integrity"]},
                    {"name": "npm:dev", "value": str(c["dev"]).lower()},
                ]
        components.append(entry)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {
                "type": "operating-system",
                "name": image_name,
                "version": recipe_hash[:12],
                "hashes": [{"alg": "SHA-256", "content": recipe_hash}],
                "properties": [
                    {"name": "outband:recipe-sha256", "value": recipe_hash},
                    {"name": "outband:webclient", "value": f"{web.name} {web.version}"},
                    {"name": "outband:webclient-sha256", "value": web.sha256},
                ],
            },
        },
        "components": components,
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
