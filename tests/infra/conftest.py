"""tests/infra: verify a launched appliance. Run by `invoke verify NAME`, or by a user's CI as

    pytest tests/infra --hosts=ssh://outband-NAME --ssh-config=STATE/ssh_config --facts=STATE/facts.json

The ssh backend (not paramiko, which checks no host key) uses the launcher's ssh_config, whose
known_hosts pins the host key generated and injected at launch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance import https


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--facts", required=True, help="the facts.json that `invoke launch` wrote for the appliance")


@pytest.fixture(scope="session")
def facts(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads(Path(request.config.getoption("--facts")).read_text())


@pytest.fixture(scope="session")
def get(facts: dict[str, Any]):
    """HTTPS from the operator's side: to the appliance's address, TLS for `name`, trusting the ACME root."""

    def _get(name: str, path: str, port: int = 443, method: str = "GET", body: Any = None) -> https.Response:
        return https.request(facts["address"], port, name, path, facts["acme_root"], method=method, body=body)

    return _get


@pytest.fixture(scope="session")
def domain(facts: dict[str, Any]) -> str:
    return facts["domain"]


@pytest.fixture(scope="session")
def federation(facts: dict[str, Any]) -> dict[str, Any]:
    """Whom the appliance federates with. Launched before the launch contract carried it (v4), an
    appliance federates with anyone: its facts say nothing, and that is what they mean."""
    return facts.get("federation") or {"open": True, "servers": [facts["domain"]]}
