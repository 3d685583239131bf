from __future__ import annotations

import re

from appliance import secrets, ssh
from appliance.state import Store


def test_config_pins_the_injected_host_key_and_never_trusts_on_first_use(tmp_path):
    record = Store(tmp_path / ("very-long-state-directory-name-" * 3)).create("a-rather-long-appliance-name", "local")
    host = secrets.ssh_keypair("host@x")
    config = ssh.write_config(record, "127.0.100.9", 2222, host.public_openssh).read_text()
    assert "StrictHostKeyChecking yes" in config
    assert "GlobalKnownHostsFile /dev/null" in config
    assert f"UserKnownHostsFile {record.path('known_hosts')}" in config
    assert record.path("known_hosts").read_text().split() == [
        "outband-a-rather-long-appliance-name",
        *host.public_openssh.split()[:2],
    ]
    control = re.search(r"ControlPath (\S+)", config).group(1)
    # %C expands to 40 hex characters and ssh appends a 17-character temporary suffix.
    assert len(control.replace("%C", "x" * 40)) + 17 < 108


def test_fingerprint_matches_openssh(tmp_path):
    import subprocess

    pair = secrets.ssh_keypair("k")
    pub = tmp_path / "k.pub"
    pub.write_text(pair.public_openssh + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == ssh.fingerprint(pair.public_openssh)
