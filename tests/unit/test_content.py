"""Content listings: two images compared file by file without booting or mounting them, the way an
operator does it (`invoke images --diff A --diff B`, piped and as JSON)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from appliance import content, disk, images, reproduce
from tests.conftest import REPO, repo_settings


def make_tree(root, motd: str = "welcome\n"):
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/motd").write_text(motd)
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (root / "etc/ssh/sshd_config").chmod(0o600)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    return root


def test_a_listing_names_every_path_with_its_hash_mode_owner_and_link(tmp_path):
    listing = content.listing(make_tree(tmp_path / "a"))
    assert set(listing) == {
        "/",
        "/etc",
        "/etc/ssh",
        "/etc/motd",
        "/etc/ssh/sshd_config",
        "/usr",
        "/usr/bin",
        "/usr/bin/tool",
        "/bin",
    }
    assert listing["/etc/ssh/sshd_config"].startswith("file sha256=") and "mode=0600" in listing["/etc/ssh/sshd_config"]
    assert listing["/bin"].startswith("link -> usr/bin ")
    assert listing["/usr/bin"].startswith("dir mode=0755")


def test_the_listing_file_is_byte_identical_for_identical_trees_made_at_different_times(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    os.utime(b / "etc/motd", (0, 0))  # times are not content
    dumped = content.dump(content.listing(a))
    assert dumped == content.dump(content.listing(b))
    (tmp_path / "l.gz").write_bytes(dumped)
    assert content.load(tmp_path / "l.gz") == content.listing(a)


def test_a_diff_says_what_changed_per_path(tmp_path):
    a = content.listing(make_tree(tmp_path / "a"))
    b_tree = make_tree(tmp_path / "b", motd="hello\n")
    (b_tree / "etc/ssh/sshd_config").chmod(0o644)
    (b_tree / "etc/new").write_text("x")
    (b_tree / "usr/bin/tool").unlink()
    found = {d.path: (d.change, d.what()) for d in content.diff(a, content.listing(b_tree))}
    assert found == {
        "/etc/motd": ("changed", "sha256"),
        "/etc/ssh/sshd_config": ("changed", "mode"),
        "/etc/new": ("added", "added"),
        "/usr/bin/tool": ("removed", "removed"),
    }


def test_clamp_times_leaves_nothing_newer_than_the_recipes_date(tmp_path):
    tree = make_tree(tmp_path / "t")
    old = tree / "etc/motd"
    os.utime(old, (1000, 1000))  # older than the date: kept
    disk.clamp_times(tree, 5000)
    times = {p: p.lstat().st_mtime for p in [tree, *tree.rglob("*")]}
    assert max(times.values()) == 5000 and times[old] == 1000
    assert (tree / "bin").lstat().st_mtime == 5000  # the link itself, not what it points to


def publish(s, tree, name: str, qcow2_bytes: bytes):
    qcow2, kernel = tree.parent / f"{name}.qcow2", tree.parent / f"{name}.vmlinuz"
    qcow2.write_bytes(qcow2_bytes)
    kernel.write_bytes(b"kernel")
    manifest = {"recipe_sha256": "r", "debian_packages": {"openssh-server": "1:10.0p1-7"}, "wheels": {}}
    return images.publish_disk(s, name, qcow2, kernel, manifest, {}, content.dump(content.listing(tree)))


@pytest.fixture
def catalogue(tmp_path):
    s = repo_settings(
        dirs={"output": str(tmp_path / "out"), "state": str(tmp_path / "state"), "cache": str(tmp_path / "cache")}
    )
    a = publish(s, make_tree(tmp_path / "a"), "outband-trixie-aaaa", b"one")
    same = publish(s, make_tree(tmp_path / "same"), "outband-trixie-same", b"one")
    changed = make_tree(tmp_path / "b", motd="tampered\n")
    (changed / "var/lib/postgresql/17/main").mkdir(parents=True)
    (changed / "var/lib/postgresql/17/main/global").write_text("system identifier")
    b = publish(s, changed, "outband-trixie-bbbb", b"two")
    return tmp_path, a, same, b


def images_diff(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "INVOKE_OUTBAND_DIRS_OUTPUT": str(tmp_path / "out"),
        "INVOKE_OUTBAND_DIRS_STATE": str(tmp_path / "state"),
    }
    return subprocess.run(
        ["invoke", "images", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_images_diff_names_the_changed_file_and_exits_5(catalogue):
    tmp_path, a, _, b = catalogue
    result = images_diff(tmp_path, "--diff", a.name, "--diff", b.name)
    assert result.returncode == 5, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0] == ["path", "change", "what", "known (images/not-reproducible.txt)"]
    by_path = {row[0]: row for row in rows[1:]}
    assert by_path["/etc/motd"][1:3] == ["changed", "sha256"] and by_path["/etc/motd"][3] == ""
    assert by_path["/var/lib/postgresql/17/main/global"][1:] == ["added", "added", ""]
    assert "different bytes" in result.stderr and "7 paths differ (7 not known)" in result.stderr


def test_a_known_difference_is_shown_with_its_reason_not_hidden(catalogue, tmp_path, capsys):
    _, a, _, b = catalogue
    listed = tmp_path / "not-reproducible.txt"
    listed.write_text("# header\n/var/lib/postgresql/17/main/*  # made at bake: its identity\n")
    known = reproduce.known_differences(listed)
    assert known == {"/var/lib/postgresql/17/main/*": "made at bake: its identity"}
    cmp = reproduce.compare(a, b)
    unexplained = [d.path for d in cmp.unexplained(known)]
    assert "/etc/motd" in unexplained and "/var/lib/postgresql/17/main/global" not in unexplained
    reproduce.show(cmp, known, as_json=True, details={"/etc/motd": "-welcome\n+tampered"})
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["/var/lib/postgresql/17/main/global"]["known"] == "made at bake: its identity"
    assert rows["/etc/motd"]["known"] == "" and rows["/etc/motd"]["diff"] == "-welcome\n+tampered"


def test_a_changed_text_file_is_shown_as_a_short_unified_diff(tmp_path):
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", motd="tampered\n")
    assert content.show_difference(a, b, "/etc/motd").splitlines() == [
        "--- a/etc/motd",
        "+++ b/etc/motd",
        "@@ -1 +1 @@",
        "-welcome",
        "+tampered",
    ]
    # Binary: diffoscope's word where Debian's is installed, else nothing but the hashes.
    (b / "usr/bin/tool").write_bytes(b"\x7fELF\xff")
    shown = content.show_difference(a, b, "/usr/bin/tool")
    if shutil.which("diffoscope") is None:
        assert shown == ""
    else:
        assert "tool" in shown


def test_images_diff_of_two_identical_images_is_empty_and_exits_0(catalogue):
    tmp_path, a, same, _ = catalogue
    result = images_diff(tmp_path, "--diff", a.name, "--diff", str(same.path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_images_diff_of_an_image_without_listing_says_how_to_get_one(catalogue):
    tmp_path, a, _, b = catalogue
    images.listing_path(b).unlink()
    result = images_diff(tmp_path, "--diff", a.name, "--diff", b.name)
    assert result.returncode == 1
    assert "has no content listing" in result.stderr and "hint: " in result.stderr
    assert result.stderr.count("has no content listing") == 1  # one line, not twice


def test_bake_check_without_an_image_says_to_bake_first(tmp_path):
    result = images_diff(tmp_path, "--help")  # the same environment; `images --help` runs nothing
    assert result.returncode == 0 and "--diff A --diff B" in result.stdout
    env = {
        **os.environ,
        "INVOKE_OUTBAND_DIRS_OUTPUT": str(tmp_path / "out"),
        "INVOKE_OUTBAND_DIRS_STATE": str(tmp_path / "state"),
    }
    check = subprocess.run(
        ["invoke", "bake", "--check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 2
    assert "no baked image to check" in check.stderr and "invoke bake" in check.stderr


def test_pins_are_apt_preferences_that_win_over_newer_versions():
    from appliance import base

    assert base.pin_preferences({"nginx": "1.26.3-3", "apt": "3.0.4"}) == (
        "Package: apt\nPin: version 3.0.4\nPin-Priority: 1001\n\n"
        "Package: nginx\nPin: version 1.26.3-3\nPin-Priority: 1001\n\n"
    )


def test_a_pinned_package_at_another_version_fails_the_bake_naming_it():
    from appliance import base
    from appliance.errors import OutbandError

    pins = {"nginx": "1.26.3-3", "apt": "3.0.4", "gone": "1.0"}
    base.check_pins({"nginx": "1.26.3-3", "apt": "3.0.4", "new": "2"}, pins, "image")  # all as pinned
    with pytest.raises(OutbandError) as e:
        base.check_pins({"nginx": "1.26.3-4", "apt": "3.0.4"}, pins, "base tree")
    assert "1 pinned package version(s) (base tree): nginx 1.26.3-3 (got 1.26.3-4)" in e.value.message
    assert "snapshot.debian.org" in e.value.hint


def test_packages_from_takes_an_image_or_its_manifest_and_refuses_anything_else(catalogue, tmp_path):
    _, a, _, _ = catalogue
    s = repo_settings(
        dirs={"output": str(tmp_path / "out"), "state": str(tmp_path / "state"), "cache": str(tmp_path / "cache")}
    )
    manifest = json.loads(a.manifest.read_text())
    manifest["debian_packages"] = {"nginx": "1.26.3-3"}
    a.manifest.write_text(json.dumps(manifest))
    assert reproduce.pins_from(s, a.name) == {"nginx": "1.26.3-3"}
    assert reproduce.pins_from(s, str(a.manifest)) == {"nginx": "1.26.3-3"}
    not_manifest = tmp_path / "x.manifest.json"
    not_manifest.write_text("[]")
    from appliance.errors import OutbandError

    with pytest.raises(OutbandError, match="not an image manifest"):
        reproduce.pins_from(s, str(not_manifest))
    with pytest.raises(OutbandError, match="no local image named nope"):
        reproduce.pins_from(s, "nope")
