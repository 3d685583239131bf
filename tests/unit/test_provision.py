from __future__ import annotations

from pathlib import Path

import pytest

from appliance import provision


@pytest.fixture
def webclient_tar(tmp_path: Path) -> Path:
    tar = tmp_path / "web.tar"
    tar.write_bytes(b"web client")
    return tar


def test_every_script_declares_its_inputs_and_the_seal_is_last():
    scripts = provision.scripts()
    assert scripts[-1].name == "90-seal.sh"
    assert [s.name for s in scripts] == sorted(s.name for s in scripts)
    for script in scripts:
        text = script.path.read_text()
        assert text.startswith("#!/bin/sh\n")
        assert "set -eu" in text


def test_stage_holds_everything_the_scripts_read(tmp_path, webclient_tar):
    stage = provision.stage(tmp_path / "stage", webclient_tar, ())
    for script in provision.scripts():
        for name in script.inputs:
            assert (stage / name).exists(), f"{script.name} reads {name}, which the stage lacks"


def test_layer_keys_do_not_depend_on_where_the_stage_lives(tmp_path, webclient_tar):
    a = provision.layer_keys("base", provision.stage(tmp_path / "a", webclient_tar, ()))
    b = provision.layer_keys("base", provision.stage(tmp_path / "b", webclient_tar, ()))
    assert [k for _, k in a] == [k for _, k in b]


def test_changing_one_input_invalidates_only_the_scripts_from_its_reader_on(tmp_path, webclient_tar):
    before = provision.layer_keys("base", provision.stage(tmp_path / "a", webclient_tar, ()))
    webclient_tar.write_bytes(b"another web client")
    after = provision.layer_keys("base", provision.stage(tmp_path / "b", webclient_tar, ()))
    names = [s.name for s, _ in before]
    first_reader = next(i for i, (s, _) in enumerate(before) if "webclient.tar" in s.inputs)
    for i, name in enumerate(names):
        same = before[i][1] == after[i][1]
        assert same == (i < first_reader), name


def test_extra_ca_changes_every_layer(tmp_path, webclient_tar):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    without = provision.layer_keys("base", provision.stage(tmp_path / "a", webclient_tar, ()))
    with_ca = provision.layer_keys("base", provision.stage(tmp_path / "b", webclient_tar, (ca,)))
    assert all(k1 != k2 for (_, k1), (_, k2) in zip(without, with_ca, strict=True))


def test_a_debian_update_moves_every_layers_cache_key(tmp_path, webclient_tar):
    """A layer made before a Debian update holds older packages: after it, no bake may reuse it."""
    stage = provision.stage(tmp_path / "a", webclient_tar, ())
    monday = {"trixie": "Sat, 08 Nov 2026 09:00:00 UTC", "trixie-security": "Mon, 23 Nov 2026 18:00:00 UTC"}
    tuesday = {**monday, "trixie-security": "Tue, 24 Nov 2026 07:00:00 UTC"}
    before = provision.cache_keys("base", stage, monday)
    after = provision.cache_keys("base", stage, tuesday)
    assert all(k1 != k2 for (_, k1), (_, k2) in zip(before, after, strict=True))
    assert provision.cache_keys("base", stage, dict(monday)) == before
