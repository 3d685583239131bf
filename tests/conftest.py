"""Shared test helpers."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from appliance.config import Settings

REPO = Path(__file__).resolve().parent.parent


def load_script(relative: str, name: str) -> ModuleType:
    """Import a script from images/ (it is not part of the package: it runs on the appliance)."""
    # A loader named explicitly: some of these scripts have no .py suffix (render-static).
    path = str(REPO / relative)
    spec = importlib.util.spec_from_file_location(name, path, loader=importlib.machinery.SourceFileLoader(name, path))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def repo_settings(**overrides: Any) -> Settings:
    """The repository's own invoke.yaml settings, as `invoke` would load them (plus flag overrides)."""
    from appliance import config

    return config.load(yaml.safe_load((REPO / "invoke.yaml").read_text())["outband"], **overrides)


# -- Stages: linters → unit → VM, in that order, in one `python3 -m pytest` ----------------------
# A failure in a fast stage skips the VM stages (minutes each under emulation): fix it first.
STAGES = {"lint": 0, "unit": 1, "e2e": 2}
_failed_stages: set[int] = set()


def _stage(item: Any) -> int:
    parts = Path(str(item.fspath)).relative_to(REPO).parts
    return STAGES.get(parts[1], 3) if len(parts) > 1 and parts[0] == "tests" else 3


def pytest_collection_modifyitems(session: Any, config: Any, items: list) -> None:
    items.sort(key=_stage)  # stable: the order within a stage is the collection order


def pytest_runtest_setup(item: Any) -> None:
    import pytest

    stage = _stage(item)
    if any(failed < stage for failed in _failed_stages) and item.get_closest_marker("vm"):
        pytest.skip("an earlier stage (linters or unit tests) failed: the VM stages do not run")


def pytest_runtest_logreport(report: Any) -> None:
    if report.failed:
        parts = Path(report.nodeid.split("::")[0]).parts
        _failed_stages.add(STAGES.get(parts[1], 3) if len(parts) > 1 else 3)
