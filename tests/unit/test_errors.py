"""User errors: one line, a hint, an explicit exit status; failures point at the log line."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from invoke import Config, Context, Exit

from appliance import cli, log, webclient
from appliance.cache import Cache
from appliance.errors import ExitStatus, OutbandError
from appliance.run import require, run
from tests.conftest import REPO


def test_a_missing_tool_names_the_package_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(OutbandError) as err:
        require("mmdebstrap")
    assert err.value.status == ExitStatus.MISSING_TOOL
    assert err.value.hint == "apt-get install mmdebstrap"


def test_a_failing_step_is_named_and_points_at_its_log_line(tmp_path):
    log.open_log(tmp_path / "run.log")
    log.detail("an earlier line")
    with pytest.raises(OutbandError) as err:
        run(
            ["sh", "-c", "echo working; echo 'E: Unable to locate package nope' >&2; exit 100"],
            what="provision script 10-packages.sh",
        )
    message = err.value.message
    assert message.startswith("provision script 10-packages.sh failed with exit status 100")
    assert "Unable to locate package nope" in message
    path, line = message.rsplit("(see ", 1)[1].rstrip(")").rsplit(":", 1)
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert path == str(tmp_path / "run.log")
    assert "$ sh -c" in lines[int(line) - 1]  # the failing command's first log line


def test_an_artifact_with_the_wrong_hash_is_refused(tmp_path):
    cache = Cache(tmp_path)
    download = cache.path(
        "downloads", f"element-v{webclient.json.loads(webclient.ELEMENT_PIN.read_text())['version']}", ".tar.gz"
    )
    download.parent.mkdir(parents=True)
    download.write_bytes(b"not the release")
    with pytest.raises(OutbandError, match="has sha256") as err:
        webclient.element(cache)
    assert "fetch it again" in err.value.hint


def invoke_cli(tmp_path, *args):
    env = {
        **{k: v for k, v in os.environ.items() if k != "DIGITALOCEAN_TOKEN"},
        "INVOKE_OUTBAND_DIRS_STATE": str(tmp_path / "state"),
        "INVOKE_OUTBAND_DIRS_OUTPUT": str(tmp_path / "out"),
    }
    return subprocess.run(
        ["invoke", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["launch", "--name", "Bad_Name"], 2, "invalid appliance name"),
        (["launch", "--name", "ok", "--domain", "no"], 2, "invalid domain"),
        (["launch", "--name", "ok", "--image", "/nonexistent.qcow2"], 2, "does not exist"),
        (["launch", "--name", "ok"], 2, "no baked image"),
        (["launch", "--name", "ok", "--federate-with", "ghost"], 2, "--federate-with ghost: no appliance"),
        (["bake", "--webclient", "netscape"], 2, "webclient must be one of"),
        (["verify", "--name", "ghost"], 2, "no appliance named 'ghost'"),
        (["bake", "--target", "digitalocean"], 2, "DIGITALOCEAN_TOKEN is not set"),
        (["images", "--target", "digitalocean"], 2, "DIGITALOCEAN_TOKEN is not set"),
        (
            ["launch", "--target", "digitalocean", "--name", "ok", "--domain", "chat.example.org"],
            2,
            "not inside the DigitalOcean DNS zone",
        ),
    ],
)
def test_cli_errors_are_one_line_with_a_hint_and_an_exit_status(tmp_path, args, status, message):
    result = invoke_cli(tmp_path, *args)
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], lines
    assert lines[1].strip().startswith("hint: ")
    assert not (tmp_path / "state/appliances/ok").exists()


def test_destroying_an_unknown_appliance_is_fine(tmp_path):
    result = invoke_cli(tmp_path, "destroy", "--name", "ghost", "--yes")
    assert result.returncode == 0


def test_sigterm_is_handled_like_ctrl_c_with_its_own_exit_status():
    """A cancelled CI job sends SIGTERM: the task cleans up as after Ctrl-C (a launch removes what it
    made: undo_on_failure treats every KeyboardInterrupt so), then exits 143."""
    config = Config(project_location=str(REPO))
    config.load_project()
    before = signal.getsignal(signal.SIGTERM)
    cleaned_up = False
    with pytest.raises(Exit) as exit_, cli.command("test", Context(config), log_file=False):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises first
        except KeyboardInterrupt:
            cleaned_up = True
            raise
    assert cleaned_up
    assert exit_.value.code == ExitStatus.TERMINATED == 143
    assert signal.getsignal(signal.SIGTERM) is before
