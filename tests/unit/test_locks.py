"""Everything that goes into an image is pinned: versions and hashes."""

from __future__ import annotations

import json
import re

from appliance import sbom
from tests.conftest import REPO

LOCK = REPO / "images/lock/synapse.txt"


def test_every_wheel_is_pinned_with_a_hash():
    wheels = sbom.locked_wheels(LOCK)
    assert len(wheels) > 30
    for w in wheels:
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", w["version"]), w
        assert w["sha256"], f"{w['name']} has no hash"
    names = {w["name"] for w in wheels}
    assert "matrix-synapse" in names
    # psycopg2 comes from Debian (python3-psycopg2), never built or downloaded as a wheel.
    assert not names & {"psycopg2", "psycopg2-binary"}


def test_the_recorders_lock_pins_nio_with_vodozemac_and_leaves_wheel_less_packages_to_debian():
    wheels = {w["name"]: w for w in sbom.locked_wheels(REPO / "images/lock/recorder.txt")}
    wanted = re.search(r"^matrix-nio\[e2e\]==(\S+)", (REPO / "images/lock/recorder.in").read_text(), re.MULTILINE)
    assert wanted and wheels["matrix-nio"]["version"] == wanted.group(1)
    assert "vodozemac" in wheels and all(w["sha256"] for w in wheels.values())
    # No wheels on PyPI: Debian's builds (apt-packages.txt), never compiled in the image.
    assert not wheels.keys() & {"peewee", "atomicwrites", "python-olm"}
    apt = (REPO / "images/lock/apt-packages.txt").read_text().split()
    assert {"python3-peewee", "python3-atomicwrites", "python3-cryptography"} <= set(apt)


def test_lock_matches_its_input():
    wanted = re.search(r"^matrix-synapse==(\S+)", (REPO / "images/lock/synapse.in").read_text(), re.MULTILINE)
    locked = {w["name"]: w["version"] for w in sbom.locked_wheels(LOCK)}
    assert wanted and locked["matrix-synapse"] == wanted.group(1)


def test_element_pin_has_version_url_and_sha256():
    pin = json.loads((REPO / "images/lock/element.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", pin["sha256"])
    assert pin["url"].endswith(f"/v{pin['version']}/element-v{pin['version']}.tar.gz")


def test_hydrogen_dependencies_are_exact_and_locked_with_integrity():
    package = json.loads((REPO / "images/webclient/hydrogen/package.json").read_text())
    for deps in (package["dependencies"], package["devDependencies"]):
        for name, version in deps.items():
            assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned exactly"
    lock = json.loads((REPO / "images/webclient/hydrogen/package-lock.json").read_text())
    for path, meta in lock["packages"].items():
        if path:
            assert meta.get("integrity", "").startswith("sha512-"), path
