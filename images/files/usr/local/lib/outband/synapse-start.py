"""Start Synapse early: import it while the system boots, run it once first boot's config exists.

Synapse's imports are the longest single step of a launch under emulation (~20 s of one vCPU) and
need nothing from the launch contract. Its config does: first boot writes homeserver.yaml from
the contract, after cloud-init. So on a launch the unit starts this in the first seconds of the
boot (the local target flags a launch on the kernel command line): it imports Synapse while
cloud-init and first boot run (cloud-init's process has the CPU first while the system boots: its
unit's StartupCPUWeight), waits for the config, then calls Synapse's own entry point
(`python -m synapse.app.homeserver` runs the same `main()`). Nothing is read from the config, the
secrets or the database before first boot has written them. Synapse has no such mode itself,
hence this wrapper. Where no launch is flagged (a cloud's datasource) the unit's condition skips
this early start and first boot starts Synapse itself, as it would without this wrapper.

Once the config exists this waits until PostgreSQL accepts connections (on a reboot it may still
be starting): Synapse gives up at once on a database it cannot reach. Run by Synapse's venv
python, as the synapse user.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

CONFIG = Path("/etc/synapse/homeserver.yaml")
POLL_SECONDS = 0.2
DATABASE_WAIT_SECONDS = 300
ARGV = ["synapse", f"--config-path={CONFIG}"]


def wait_for_config(config: Path = CONFIG) -> None:
    """Until first boot has written the config (it writes it last, by rename). The unit's start
    timeout bounds this: a first boot that fails never writes it."""
    while not config.exists():
        time.sleep(POLL_SECONDS)


def database_address(config: dict) -> tuple[str, int]:
    args = config["database"]["args"]
    return args.get("host", "localhost"), int(args.get("port", 5432))


def wait_for_database(address: tuple[str, int], seconds: float = DATABASE_WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(address, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"synapse-start: no database at {address[0]}:{address[1]} after {seconds:.0f}s"
                ) from None
            time.sleep(POLL_SECONDS)


def skip_dependency_check() -> None:
    """Synapse checks its installed dependencies against its requirements at every start (and an
    extra's when the config turns on an optional feature: none in this appliance's config): ~0.7 s
    of one vCPU under emulation, on the launch's critical path. This venv is made once, at bake
    time, from hash-pinned wheels, and checked there by the same function (images/provision/
    20-synapse.sh); nothing changes it afterwards. A Synapse without this function stops here
    rather than starting unchecked in some other way."""
    from synapse.util import check_dependencies

    if not callable(getattr(check_dependencies, "check_requirements", None)):
        raise SystemExit("synapse-start: synapse.util.check_dependencies.check_requirements is gone")
    check_dependencies.check_requirements = lambda extra=None: None


def main() -> int:
    started = time.monotonic()
    skip_dependency_check()
    import psycopg2  # noqa: F401 -- Synapse's database engine imports it lazily: import it now too
    import synapse.app.homeserver
    import yaml  # Synapse's own dependency, imported by it already
    from synapse.app._base import sdnotify

    # In the journal: when Synapse's import ended is what a launch's timeline needs to know.
    print(f"synapse-start: Synapse imported in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    if not CONFIG.exists():
        sdnotify(b"STATUS=imported; waiting for first boot to write " + str(CONFIG).encode())
    wait_for_config()
    sdnotify(b"STATUS=waiting for the database")
    wait_for_database(database_address(yaml.safe_load(CONFIG.read_text())))
    sys.argv = ARGV
    synapse.app.homeserver.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
