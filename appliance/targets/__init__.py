"""One protocol, one class per target (img-proof's model): launch → ssh → destroy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.config import Settings
from appliance.state import Record


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    domain: str
    image: Path | None  # local: a qcow2; digitalocean: a snapshot name or id (None: the newest)
    contact_email: str
    bare: bool = False  # no launch contract: boot the image as baked, SSH only (image tests)

    @classmethod
    def ssh_only(cls, name: str, image: Path) -> LaunchSpec:
        """The image as baked, booted with SSH access only (the image tests, the bench's floor)."""
        return cls(name=name, domain=f"{name}.outband.test", image=image, contact_email="ops@example.org", bare=True)


class Target(Protocol):
    def launch(self, spec: LaunchSpec, keep_on_failure: bool = False) -> Record: ...

    def destroy(self, record: Record) -> None: ...

    def status(self, record: Record) -> str: ...


def get(s: Settings) -> Target:
    if s.target == "digitalocean":
        from appliance.targets.digitalocean import DigitalOceanTarget

        return DigitalOceanTarget(s)
    from appliance.targets.local import LocalTarget

    return LocalTarget(s)
