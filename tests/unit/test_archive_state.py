"""base.archive_state reads each suite's Release date from the configured mirrors (here: a loopback
HTTP server laid out like a Debian mirror)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import pytest

from appliance import base, config
from appliance.errors import OutbandError
from tests.conftest import repo_settings


@pytest.fixture
def mirror(tmp_path: Path):
    for suite, date in [
        ("trixie", "Sat, 08 Nov 2026 09:00:00 UTC"),
        ("trixie-updates", "Fri, 27 Nov 2026 02:10:00 UTC"),
    ]:
        (tmp_path / "debian/dists" / suite).mkdir(parents=True)
        (tmp_path / "debian/dists" / suite / "Release").write_text(f"Origin: Debian\nSuite: {suite}\nDate: {date}\n")
    (tmp_path / "security/dists/trixie-security").mkdir(parents=True)
    (tmp_path / "security/dists/trixie-security/Release").write_text("Origin: Debian\n")  # no Date: line
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def settings(mirror: str, security: str) -> config.Settings:
    s = repo_settings()
    return dataclasses.replace(
        s, image=dataclasses.replace(s.image, suite="trixie", mirror=mirror, security_mirror=security)
    )


def test_each_suite_is_keyed_by_its_release_date(mirror):
    url, root = mirror
    (root / "security/dists/trixie-security/Release").write_text("Date: Thu, 26 Nov 2026 20:00:00 UTC\n")
    assert base.archive_state(settings(f"{url}/debian", f"{url}/security")) == {
        "trixie": "Sat, 08 Nov 2026 09:00:00 UTC",
        "trixie-updates": "Fri, 27 Nov 2026 02:10:00 UTC",
        "trixie-security": "Thu, 26 Nov 2026 20:00:00 UTC",
    }


def test_a_release_file_without_a_date_is_an_error(mirror):
    url, _ = mirror
    with pytest.raises(OutbandError, match="has no Date: field"):
        base.archive_state(settings(f"{url}/debian", f"{url}/security"))


def test_an_unreachable_mirror_is_a_one_line_error_with_a_hint(mirror):
    url, _ = mirror
    with pytest.raises(OutbandError, match=r"cannot read .*/nowhere/dists/trixie/Release") as e:
        base.archive_state(settings(f"{url}/nowhere", f"{url}/security"))
    assert "check the network" in (e.value.hint or "")
