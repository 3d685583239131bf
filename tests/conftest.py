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
    return _stage_of_path(item.nodeid.split("::")[0])


# The VM stage's files in this order: the ones that boot their own VMs (a Packer build, simulated
# droplets) before the shared appliances are launched, so that no idle appliance shares the two
# cores with an emulated build. The rest follow in collection order.
E2E_ORDER = ("test_bake.py", "test_via_packer.py", "test_digitalocean_sim.py")


def _order(item: Any) -> tuple[int, int]:
    name = Path(str(item.fspath)).name
    return _stage(item), E2E_ORDER.index(name) if name in E2E_ORDER else len(E2E_ORDER)


def pytest_collection_modifyitems(session: Any, config: Any, items: list) -> None:
    items.sort(key=_order)  # stable: the order within a file is the collection order


def pytest_runtest_setup(item: Any) -> None:
    import pytest

    stage = _stage(item)
    if any(failed < stage for failed in _failed_stages) and item.get_closest_marker("vm"):
        pytest.skip("an earlier stage (linters or unit tests) failed: the VM stages do not run")


# Seconds spent per test file (setup + call + teardown), reported per stage at the end: CI's log is
# where BENCHMARKS.md's per-stage times come from, and a slow file shows which journey to trim.
_seconds_per_file: dict[str, float] = {}
# Figures a VM test measured on its way (record_property("measured", "…")), repeated at the end of the
# run: pytest hides a passing test's output, and these belong in BENCHMARKS.md.
_measured: list[str] = []


def pytest_runtest_logreport(report: Any) -> None:
    path = report.nodeid.split("::")[0]
    _seconds_per_file[path] = _seconds_per_file.get(path, 0.0) + report.duration
    if report.when == "teardown":  # the item's last report carries every property it recorded
        _measured.extend(f"{report.nodeid}: {value}" for key, value in report.user_properties if key == "measured")
    if report.failed:
        _failed_stages.add(_stage_of_path(path))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    names = {number: name for name, number in STAGES.items()}
    per_stage: dict[int, float] = {}
    for path, seconds in _seconds_per_file.items():
        stage = _stage_of_path(path)
        per_stage[stage] = per_stage.get(stage, 0.0) + seconds
    if set(per_stage) <= {3}:
        return  # a run of other tests (tests/infra, which `invoke verify` runs): no stages to report
    if _measured:
        terminalreporter.section("measured")
        for line in _measured:
            terminalreporter.write_line(line)
    terminalreporter.section("time per stage")
    for stage in sorted(per_stage):
        terminalreporter.write_line(f"{names.get(stage, 'other')}: {per_stage[stage]:.1f} s")
        for path in sorted(p for p in _seconds_per_file if _stage_of_path(p) == stage):
            terminalreporter.write_line(f"    {path}: {_seconds_per_file[path]:.1f} s")


def _stage_of_path(path: str) -> int:
    """A test file's stage from its path relative to the repository (tests/<stage>/…)."""
    parts = Path(path).parts
    return STAGES.get(parts[1], 3) if len(parts) > 1 and parts[0] == "tests" else 3
