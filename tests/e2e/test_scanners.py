"""Issue 19: the appliance as a security team's own scanners see it, not as our handshake tests do.

sslscan (Debian's) against 443 (clients), 8448 (federation) and 5349 (TURN over TLS) of the
journey's appliance, from the operator's side, as XML. The target is Mozilla's "intermediate"
profile without DHE: TLS 1.2 with ECDHE + AEAD suites only, TLS 1.3 besides, nothing older.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tests.e2e.conftest import facts, invoke

pytestmark = pytest.mark.vm

# coturn 4.6.1 (Debian 13's) has no TLS 1.3 on its TLS listener: that came with coturn 4.6.2
# (coturn#989, #1171). SECURITY.md lists it; the scan records what it finds.
TLS13_EXPECTED = {443: True, 8448: True, 5349: False}


def sslscan(address: str, port: int, sni: str) -> ET.Element:
    if shutil.which("sslscan") is None:
        pytest.fail("sslscan is not installed: scripts/install-deps installs it (Debian's package)")
    result = subprocess.run(
        [
            "sslscan",
            "--no-colour",
            "--xml=-",
            f"--sni-name={sni}",
            # Ciphers and protocols only: the rest (heartbleed, renegotiation, …) is the TLS
            # library's, and each check is more handshakes against an emulated CPU.
            "--no-heartbleed",
            "--no-renegotiation",
            "--no-compression",
            "--no-fallback",
            "--no-groups",
            f"{address}:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return ET.fromstring(result.stdout[result.stdout.index("<?xml") :])  # noqa: S314 -- our own scan of our appliance


@pytest.mark.parametrize("port", [443, 8448, 5349])
def test_a_tls_scanner_finds_only_ecdhe_aead_suites_and_no_old_protocol(journey_appliance, port, record_property):
    f = facts(journey_appliance)
    report = sslscan(f["address"], port, f"matrix.{f['domain']}")
    protocols = {f"{p.get('type')}{p.get('version')}": p.get("enabled") == "1" for p in report.iter("protocol")}
    suites = [(c.get("sslversion"), c.get("cipher")) for c in report.iter("cipher")]
    record_property("measured", f"sslscan {port}: " + " ".join(f"{v}:{c}" for v, c in suites))
    assert protocols["tls1.2"] and not any(protocols[p] for p in ("ssl2", "ssl3", "tls1.0", "tls1.1")), protocols
    assert protocols["tls1.3"] is TLS13_EXPECTED[port], protocols
    tls12 = [c for v, c in suites if v == "TLSv1.2"]
    assert tls12, suites
    weak = [c for c in tls12 if not (c.startswith("ECDHE-") and ("-GCM-" in c or c.endswith("CHACHA20-POLY1305")))]
    assert weak == [], f"{port} accepts suites outside ECDHE + AEAD: {weak}"
    assert all(c.startswith("TLS_") for v, c in suites if v == "TLSv1.3")


# Every long-running service we ship, sandboxed to systemd-analyze's exposure 5.0 or lower (issue
# 19). sshd and unattended-upgrades must stay able to log an operator in and to upgrade the
# system: their figures are recorded, and SECURITY.md states them.
OURS = (
    "synapse.service",
    "postgresql@17-main.service",
    "nginx.service",
    "coturn.service",
    "outband-recorder.service",
)
RECORDED = ("ssh.service", "unattended-upgrades.service", "systemd-networkd.service", "systemd-resolved.service")


def test_every_service_we_ship_is_sandboxed_to_an_exposure_of_5_or_less(journey_appliance, record_property):
    from appliance import ssh

    units = " ".join(OURS + RECORDED)
    script = f"for u in {units}; do systemd-analyze security --no-pager $u | tail -n 1; done"
    out = ssh.command(journey_appliance, script, timeout=300)
    assert out.returncode == 0, out.stderr
    exposure = {
        unit: float(value) for unit, value in re.findall(r"Overall exposure level for (\S+): (\d+\.\d+)", out.stdout)
    }
    assert set(exposure) == set(OURS + RECORDED), out.stdout
    record_property("measured", "systemd-analyze security: " + ", ".join(f"{u} {v}" for u, v in exposure.items()))
    assert {u: v for u, v in exposure.items() if u in OURS and v > 5.0} == {}


def test_audit_system_shows_an_operators_secret_read_config_change_and_sudo(journey_appliance):
    """What auditd records (images/files/etc/audit/rules.d/outband.rules), through `invoke audit --system`."""
    from appliance import ssh

    done = ssh.command(
        journey_appliance,
        "sudo cat /etc/synapse/secrets/macaroon >/dev/null && sudo touch /etc/nginx/conf.d/audit-test.conf"
        " && sudo rm /etc/nginx/conf.d/audit-test.conf",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = json.loads(invoke("audit", "--system", "--json", "--name", journey_appliance.name).stdout)
    seen = {(e["event"], e["account"], e["detail"]) for e in events}
    assert ("secret read", "outband", "/etc/synapse/secrets/macaroon") in seen
    assert ("config changed", "outband", "/etc/nginx/conf.d/audit-test.conf") in seen
    assert ("sudo", "outband", "cat /etc/synapse/secrets/macaroon") in seen
    assert any(e["event"] == "ssh sign-in" and e["account"] == "outband" for e in events)
    # The services' own reads of their secrets at each start are not in it (rules need a login uid).
    assert not [e for e in events if e["event"] == "secret read" and e["account"] != "outband"]
