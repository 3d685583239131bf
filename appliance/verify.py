"""verify: tests/infra with pytest-testinfra over the ssh backend (pinned known_hosts) + operator checks."""

from __future__ import annotations

import json

import pytest

from appliance import log
from appliance.config import REPO, Settings
from appliance.errors import ExitStatus, die
from appliance.state import Store


def verify(s: Settings, name: str) -> None:
    record = Store(s.dirs.state).require(name)
    facts_file = record.path("facts.json")
    if not facts_file.exists():
        die(
            f"{name} has no facts file: its launch did not finish",
            hint=f"`invoke destroy {name}` and launch again",
            status=ExitStatus.USAGE,
        )
    facts = json.loads(facts_file.read_text())
    report = s.dirs.output / "reports" / f"verify-{name}.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    args = [
        str(REPO / "tests/infra"),
        f"--hosts=ssh://{facts['ssh_host']}",
        f"--ssh-config={facts['ssh_config']}",
        f"--facts={facts_file}",
        f"--junitxml={report}",
        "-q",
        "-p",
        "no:cacheprovider",
        # Only the plugin these checks use: whatever else is installed here (hypothesis,
        # pytest-benchmark, ...) would load on every verify and cost ~1 s of it on this machine.
        "--disable-plugin-autoload",
        "-p",
        "testinfra.plugin",
    ]
    log.detail("pytest " + " ".join(args))
    code = pytest.main(args)
    if code != 0:
        die(
            f"verification of {name} failed (pytest exit status {code})",
            hint=f"report: {report}",
            status=ExitStatus.VERIFY_FAILED,
        )
    log.out.print(f"[green]verified[/] {name} (report: {report})")
