"""Shared test helpers."""

from __future__ import annotations

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
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def repo_settings(**overrides: Any) -> Settings:
    """The repository's own invoke.yaml settings, as `invoke` would load them (plus flag overrides)."""
    from appliance import config

    return config.load(yaml.safe_load((REPO / "invoke.yaml").read_text())["outband"], **overrides)
