"""Stage 1: linters as tests — they run first, in seconds, and a finding fails the suite like any test."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO


def shell_scripts() -> list[str]:
    """Every shell script of the recipe and the helpers (by its #! line, not its name)."""
    found = []
    for folder in ("images", "scripts", ".ci", "tests/sim"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and not path.name.endswith((".py", ".json", ".j2")):
                head = path.read_bytes()[:32]
                if head.startswith((b"#!/bin/sh", b"#!/bin/bash", b"#!/usr/bin/env bash", b"#!/usr/bin/env sh")):
                    found.append(str(path.relative_to(REPO)))
    return found


def test_ruff_check():
    result = subprocess.run(["ruff", "check", "--quiet", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_check():
    result = subprocess.run(["ruff", "format", "--check", "--quiet", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, "ruff format would change:\n" + result.stdout + result.stderr


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (scripts/install-deps installs it)")
    scripts = shell_scripts()
    assert len(scripts) >= 10, scripts  # the provision scripts at least
    result = subprocess.run(["shellcheck", "--severity=style", *scripts], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
