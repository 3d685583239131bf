"""bake (cached) → launch → verify → destroy, for real: two appliances side by side, bad input, Ctrl-C,
a failing first boot, a reboot, Element web's path, and destroy."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from appliance import qemu, ssh
from tests.conftest import REPO
from tests.e2e.conftest import invoke, state_dir

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def launched(journey_appliance, second_appliance):
    return {"e2e-a": journey_appliance, "e2e-b": second_appliance}


@pytest.mark.parametrize("name", ["e2e-a", "e2e-b"])
def test_verify_passes(launched, name):
    result = invoke("verify", "--name", name, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_appliances_run_side_by_side_on_their_own_addresses(launched):
    addresses = {r.data["address"] for r in launched.values()}
    assert len(addresses) == 2
    listing = {line.split("\t")[0]: line.split("\t") for line in invoke("ls").stdout.splitlines()[1:]}
    assert listing["e2e-a"][-1] == listing["e2e-b"][-1] == "running"


PG_CONTROLDATA = "sudo -n /usr/lib/postgresql/17/bin/pg_controldata /var/lib/postgresql/17/main"


def test_two_launches_of_the_image_never_share_identity(launched):
    """machine-id, SSH host key and PostgreSQL's system identifier and mock-authentication nonce
    come from each boot, never from the image (test_bake: two bakes give the same bytes, so the image
    holds nothing random; pg-identity gives the cluster its identity at the first start)."""
    ids = {name: ssh.command(r, "cat /etc/machine-id").stdout.strip() for name, r in launched.items()}
    keys = {
        name: ssh.command(r, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for name, r in launched.items()
    }
    assert all(len(i) == 32 for i in ids.values()) and ids["e2e-a"] != ids["e2e-b"]
    assert keys["e2e-a"] != keys["e2e-b"]
    control = {name: ssh.command(r, PG_CONTROLDATA, check=True).stdout for name, r in launched.items()}
    pg = {
        name: dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("Database system", "Mock auth")))
        for name, out in control.items()
    }
    for fields in pg.values():
        assert fields["Database system identifier"].strip() not in ("", "0"), fields
        assert fields["Mock authentication nonce"].strip().strip("0") != "", fields
    assert pg["e2e-a"] != pg["e2e-b"]


def test_an_appliance_owns_its_disk(launched, settings):
    """Its disk is layered on its own link to the image, in its state: not on a file under build/
    that a later bake or a prune may replace or remove."""
    from appliance import qemu as q

    record = launched["e2e-b"]
    info = json.loads(
        q.run(
            ["qemu-img", "info", "--output=json", "-U", record.path("disk.qcow2")], what="qemu-img info", capture=True
        )
    )
    backing = Path(record.dir, info["backing-filename"]).resolve()
    assert backing == record.path("base.qcow2")
    assert settings.dirs.output not in backing.parents


def test_two_launches_never_share_a_secret_or_key(launched):
    a, b = (launched[n] for n in ("e2e-a", "e2e-b"))
    sa = json.loads(a.path("secrets.json").read_text())
    sb = json.loads(b.path("secrets.json").read_text())
    for field in sa:
        assert sa[field] != sb[field], field
    assert sa["signing_key"].split()[2] != sb["signing_key"].split()[2]
    assert a.path("host_ed25519").read_text() != b.path("host_ed25519").read_text()
    assert a.path("operator_ed25519").read_text() != b.path("operator_ed25519").read_text()


def test_state_is_private_and_the_seed_is_gone(launched):
    for record in launched.values():
        assert record.dir.stat().st_mode & 0o077 == 0
        for path in record.dir.iterdir():
            if path.is_file():
                assert path.stat().st_mode & 0o077 == 0, path
        assert not record.path("seed.iso").exists()
        block = qemu.qmp(record.path("qmp.sock"), "query-block")
        cd = next(d for d in block if d.get("qdev", "").endswith("seedcd") or d["device"] == "seed")
        assert "inserted" not in cd  # the virtual drive is empty


def test_a_name_in_use_is_refused_and_nothing_is_touched(launched, baked):
    before = launched["e2e-a"].path("appliance.json").read_text()
    result = invoke("launch", "--name", "e2e-a", "--image", str(baked["image"]), check=False)
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert launched["e2e-a"].path("appliance.json").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "e2e-bad", "--domain", "not a domain"], "invalid domain"),
        (["--name", "Bad_Name"], "invalid appliance name"),
        (["--name", "e2e-bad", "--image", "/nonexistent.qcow2"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_with_a_hint_and_leaves_nothing(settings, args, message):
    result = invoke("launch", *args, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].strip().startswith("hint: ")
    assert not state_dir(settings, "e2e-bad").exists()
    assert not state_dir(settings, "Bad_Name").exists()


def _default_sigint() -> None:
    # A job started in the background without job control (`cmd &` in a script) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: give the launch Ctrl-C's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_launch_removes_what_was_made(baked, settings, e2e, signum, status):
    proc = subprocess.Popen(
        ["invoke", "launch", "--name", "e2e-int", "--image", str(baked["image"])],
        cwd=REPO,
        env=e2e.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    record_file = state_dir(settings, "e2e-int") / "appliance.json"
    pid = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and pid is None:  # wait until the VM runs, then interrupt
            if record_file.exists():
                pid = json.loads(record_file.read_text())["data"].get("pid")
            time.sleep(0.2)
        assert pid, "the launch never started its VM"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == status, err
        assert not state_dir(settings, "e2e-int").exists()
        assert not qemu.alive(int(pid))
    finally:  # a failed check must not leave its VM running for the rest of the run
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if state_dir(settings, "e2e-int").exists():
            invoke("destroy", "--name", "e2e-int", "--yes")


def test_a_failing_first_boot_is_reported_with_its_cause_and_cleaned_up(baked, settings, monkeypatch):
    """Fault injected at the DNS: the names point at an address where no appliance listens, so the
    real ACME validation fails on the appliance. The launcher must name the cause (read from the
    serial console) and remove everything, VM included."""
    from appliance import images, pebble
    from appliance.errors import OutbandError
    from appliance.targets import LaunchSpec
    from appliance.targets.local import LocalTarget

    real_add_names = pebble.add_names
    monkeypatch.setattr(
        pebble, "add_names", lambda state, names, address: real_add_names(state, names, "127.0.100.254")
    )
    target = LocalTarget(settings)
    spec = LaunchSpec(
        name="e2e-acme",
        domain="e2e-acme.outband.test",
        image=images.disk_image(baked["image"]),
        contact_email="ops@example.org",
    )
    with pytest.raises(OutbandError, match=r"first boot failed on the appliance: CalledProcessError: .*certbot"):
        target.launch(spec)
    assert not state_dir(settings, "e2e-acme").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"outband-e2e-acme" in read_or_empty(p)]


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended while we looked
        return b""


def test_element_web_from_a_pinned_tarball_is_served(launched, tmp_path):
    """Element web's path, offline: a release tarball of Element's layout, pinned by sha256 and put
    where the bake's error message says, becomes the site the appliance serves with its own
    per-launch config.json (30-webclient.sh, run on the appliance as a bake runs it)."""
    import hashlib
    import io
    import tarfile

    from appliance import https, webclient
    from appliance.cache import Cache
    from appliance.errors import OutbandError

    marker = "Element (a locally made release tarball)"
    tarball = tmp_path / "element-v9.9.9.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, body in (
            ("index.html", f"<!doctype html><title>{marker}</title><script src=bundles/app.js></script>"),
            ("config.sample.json", '{"default_server_config": {}}'),
            ("bundles/app.js", "console.log('element');"),
            ("version", "9.9.9"),
        ):
            data = body.encode()
            info = tarfile.TarInfo(f"element-v9.9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    pin = tmp_path / "element.json"
    url = "https://github.invalid/element-v9.9.9.tar.gz"
    pin.write_text(json.dumps({"version": "9.9.9", "url": url, "sha256": "0" * 64}))
    cache = Cache(tmp_path / "cache")
    placed = cache.path("downloads", "element-v9.9.9", ".tar.gz")
    with pytest.raises(OutbandError, match="cannot fetch Element web") as err:
        webclient.element(cache, pin)
    assert str(placed) in err.value.hint  # the offline path: put the file where the hint says
    placed.parent.mkdir(parents=True, exist_ok=True)
    placed.write_bytes(tarball.read_bytes())
    with pytest.raises(OutbandError, match=r"the pin in images/lock/element\.json says"):
        webclient.element(cache, pin)
    pin.write_text(json.dumps({"version": "9.9.9", "url": url, "sha256": digest}))
    web = webclient.element(cache, pin)
    assert web.sha256 == digest

    record = launched["e2e-b"]
    stage = tmp_path / "stage"
    (stage / "provision").mkdir(parents=True)
    (stage / "provision/30-webclient.sh").write_text((REPO / "images/provision/30-webclient.sh").read_text())
    (stage / "webclient.tar").write_bytes(web.tar.read_bytes())
    subprocess.run(
        [
            "scp",
            "-q",
            "-r",
            "-F",
            str(record.path("ssh_config")),
            str(stage),
            f"{ssh.alias(record.name)}:/tmp/outband-stage",
        ],
        check=True,
    )
    ran = ssh.command(
        record, "sudo env OUTBAND_STAGE=/tmp/outband-stage sh -eu /tmp/outband-stage/provision/30-webclient.sh"
    )
    assert ran.returncode == 0, ran.stderr
    domain, ca = record.data["domain"], str(record.path("acme-root.pem"))
    page = https.request(record.data["address"], 443, f"element.{domain}", "/", ca)
    assert page.status == 200 and marker.encode() in page.body
    config = https.request(record.data["address"], 443, f"element.{domain}", "/config.json", ca).json()
    assert config["default_server_config"]["m.homeserver"]["base_url"] == f"https://matrix.{domain}"


@pytest.fixture
def doomed(baked, settings):
    """An appliance of this test's own to destroy (the image booted with SSH access only: the
    quickest boot; destroy removes the same things either way)."""
    from appliance import images
    from appliance.targets import LaunchSpec
    from appliance.targets.local import LocalTarget

    target = LocalTarget(settings)
    record = target.launch(LaunchSpec.ssh_only("e2e-doomed", images.disk_image(baked["image"])))
    yield record
    if target.store.get("e2e-doomed"):
        target.destroy(record)


def test_destroy_removes_everything_and_is_idempotent(doomed, settings):
    pid, address = int(doomed.data["pid"]), doomed.data["address"]
    invoke("destroy", "--name", "e2e-doomed", "--yes")
    assert not qemu.alive(pid)
    assert not state_dir(settings, "e2e-doomed").exists()
    with socket.socket() as sock:  # its ports are free again
        sock.bind((address, 2222))
    again = invoke("destroy", "--name", "e2e-doomed", "--yes")
    assert again.returncode == 0 and "nothing to destroy" in again.stderr
