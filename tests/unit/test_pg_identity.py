"""pg-identity: the image's PostgreSQL cluster has no identity of its own, each appliance makes one.
On PostgreSQL 17's real pg_control, the bake (test_bake: two bakes, one sha256) and every launch
(the cluster starts on the identity made here; test_lifecycle: two appliances, two identifiers)
cover it end to end; these tests pin the byte layout and the refusals."""

from __future__ import annotations

import struct

import pytest

from tests.conftest import load_script

pgid = load_script("images/files/usr/local/lib/outband/pg-identity", "pg_identity")


def control_file(version: int = 1700, state: int = 1, sysid: int = 7714041156864597397) -> bytearray:
    """A pg_control as PostgreSQL 17 writes it: the fields this tool touches, the rest filler."""
    data = bytearray(8192)
    data[: pgid.CRC] = bytes(range(256)) + bytes(pgid.CRC - 256)
    struct.pack_into("<Q", data, pgid.SYSTEM_IDENTIFIER, sysid)
    struct.pack_into("<I", data, pgid.VERSION, version)
    struct.pack_into("<i", data, pgid.STATE, state)
    struct.pack_into("<q", data, pgid.TIME, 1796065787)
    struct.pack_into("<q", data, pgid.CHECKPOINT_TIME, 1796065787)
    data[pgid.NONCE : pgid.NONCE + pgid.NONCE_LEN] = b"\xab" * pgid.NONCE_LEN
    struct.pack_into("<I", data, pgid.CRC, pgid.crc32c(bytes(data[: pgid.CRC])))
    return data


@pytest.fixture
def datadir(tmp_path):
    d = tmp_path / "17" / "main"
    for sub in ("global", "pg_wal/archive_status", "pg_stat", "base/5"):
        (d / sub).mkdir(parents=True)
    (d / "global/pg_control").write_bytes(control_file())
    (d / "pg_wal/000000010000000000000002").write_bytes(b"wal")
    (d / "pg_wal/archive_status/000000010000000000000001.done").write_bytes(b"")
    (d / "pg_stat/pgstat.stat").write_bytes(b"stats")
    (d / "base/5/pg_internal.init").write_bytes(b"relcache")
    (d / "base/5/1259").write_bytes(b"pg_class")
    return d


def test_crc32c_is_castagnolis():
    # The standard check value of CRC-32C (iSCSI, PostgreSQL's pg_crc32c).
    assert pgid.crc32c(b"123456789") == 0xE3069283


def test_clear_leaves_no_identity_no_time_and_no_wal(datadir):
    pgid.clear(datadir, when=1764115200)
    data = (datadir / "global/pg_control").read_bytes()
    assert pgid.identifier(data) == 0
    assert data[pgid.NONCE : pgid.NONCE + pgid.NONCE_LEN] == bytes(pgid.NONCE_LEN)
    assert struct.unpack_from("<qq", data, pgid.TIME)[0] == 1764115200
    assert struct.unpack_from("<q", data, pgid.CHECKPOINT_TIME)[0] == 1764115200
    assert struct.unpack_from("<I", data, pgid.CRC)[0] == pgid.crc32c(data[: pgid.CRC])
    left = sorted(str(p.relative_to(datadir)) for p in datadir.rglob("*") if p.is_file())
    assert left == ["base/5/1259", "global/pg_control"]


def test_two_clusters_cleared_are_the_same_bytes(tmp_path):
    """What makes two bakes equal: clusters that differ only in identity and times."""
    out = []
    for name, sysid in (("a", 1), ("b", 2)):
        d = tmp_path / name
        (d / "global").mkdir(parents=True)
        (d / "global/pg_control").write_bytes(control_file(sysid=sysid))
        pgid.clear(d, when=1764115200)
        out.append((d / "global/pg_control").read_bytes())
    assert out[0] == out[1]


def test_make_gives_a_cleared_cluster_a_random_identity_once(datadir, tmp_path):
    calls = tmp_path / "calls"
    # pg_resetwal itself runs on the appliance (every e2e launch); here a recorder stands in.
    fake = tmp_path / "pg_resetwal"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    pgid.clear(datadir, when=1764115200)
    assert pgid.make(datadir, fake) is True
    first = (datadir / "global/pg_control").read_bytes()
    assert pgid.identifier(first) != 0
    assert first[pgid.NONCE : pgid.NONCE + pgid.NONCE_LEN] != bytes(pgid.NONCE_LEN)
    assert struct.unpack_from("<I", first, pgid.CRC)[0] == pgid.crc32c(first[: pgid.CRC])
    assert calls.read_text() == f"-D {datadir}\n"
    # A later start: the identity stays, pg_resetwal does not run again.
    assert pgid.make(datadir, fake) is False
    assert (datadir / "global/pg_control").read_bytes() == first
    assert calls.read_text().count("\n") == 1


def test_another_postgresql_version_is_refused_before_anything_is_written(datadir):
    (datadir / "global/pg_control").write_bytes(control_file(version=1800))
    with pytest.raises(SystemExit, match="version 1800, not 1700"):
        pgid.clear(datadir, when=0)
    assert (datadir / "pg_wal/000000010000000000000002").exists()


def test_a_layout_that_does_not_match_the_crc_is_refused(datadir):
    data = control_file()
    data[pgid.CRC] ^= 0xFF
    (datadir / "global/pg_control").write_bytes(data)
    with pytest.raises(SystemExit, match="CRC does not match"):
        pgid.make(datadir, datadir / "never-run")


def test_a_running_or_crashed_cluster_is_not_cleared(datadir):
    (datadir / "global/pg_control").write_bytes(control_file(state=6))  # DB_IN_PRODUCTION
    with pytest.raises(SystemExit, match="not shut down cleanly"):
        pgid.clear(datadir, when=0)


def test_the_command_line_names_its_two_verbs(capsys):
    assert pgid.main(["pg-identity"]) == 2
    assert "clear|make DATADIR" in capsys.readouterr().err
