from __future__ import annotations

import stat

import pytest

from appliance.errors import OutbandError
from appliance.state import Store, write_private


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dirs_are_0700_and_files_0600(tmp_path):
    store = Store(tmp_path / "state")
    record = store.create("alpha", "local")
    assert mode(tmp_path / "state") == 0o700
    assert mode(record.dir) == 0o700
    assert mode(record.file) == 0o600
    secret = write_private(record.path("secrets.json"), '{"x": "y"}')
    assert mode(secret) == 0o600


def test_a_name_in_use_is_refused(tmp_path):
    store = Store(tmp_path)
    store.create("alpha", "local")
    with pytest.raises(OutbandError, match="already exists") as err:
        store.create("alpha", "local")
    assert "destroy" in err.value.hint


def test_records_are_saved_as_they_change(tmp_path):
    store = Store(tmp_path)
    record = store.create("alpha", "local")
    record.set(pid=1234, address="127.0.100.1")
    again = store.require("alpha")
    assert again.data == {"pid": 1234, "address": "127.0.100.1"}
    assert [r.name for r in store.all()] == ["alpha"]


def test_remove_shreds_and_is_idempotent(tmp_path, monkeypatch):
    store = Store(tmp_path)
    record = store.create("alpha", "local")
    write_private(record.path("secrets.json"), "s3cret")
    shredded = []
    import appliance.state as state_mod

    real = state_mod.shred
    monkeypatch.setattr(state_mod, "shred", lambda p: (shredded.append(p.name), real(p)))
    store.remove(record)
    assert "secrets.json" in shredded
    assert not record.dir.exists()
    store.remove(record)  # again: nothing to do, no error
    assert store.get("alpha") is None


def test_unknown_appliance_has_a_hint(tmp_path):
    with pytest.raises(OutbandError) as err:
        Store(tmp_path).require("ghost")
    assert "invoke ls" in err.value.hint
