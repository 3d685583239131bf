"""One protocol, one class per target (img-proof's model). A target owns everything that differs
between the places an appliance runs: how its image is provisioned, published, found, listed and
pruned, and how an appliance is launched, reached and destroyed. Nothing outside targets/ asks
which target it is dealing with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from appliance.config import Settings
from appliance.images import Image
from appliance.provisioners import Built, Provisioner
from appliance.state import Record


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    domain: str
    image: Image | str | None  # a resolved image, or a reference the target resolves (None: newest)
    contact_email: str
    bare: bool = False  # no launch contract: boot the image as baked, SSH only (image tests)
    federation: tuple[str, ...] = ()  # the team's other server names (federation with them only)
    open_federation: bool = False  # federate with any server instead

    @classmethod
    def ssh_only(cls, name: str, image: Image) -> LaunchSpec:
        """The image as baked, booted with SSH access only (the image tests, the bench's floor)."""
        return cls(name=name, domain=f"{name}.outband.test", image=image, contact_email="ops@example.org", bare=True)


class Target(Protocol):
    name: str

    # -- images -------------------------------------------------------------------------------------
    def provisioner(
        self, via: str | None, use_layers: bool = True, fresh_base: bool = False, pins: dict[str, str] | None = None
    ) -> Provisioner: ...

    def publish(self, name: str, built: Built, manifest: dict, bom: dict) -> Image: ...

    def resolve_image(self, ref: str | None) -> Image: ...  # None: the newest

    def images(self) -> list[Image]: ...  # oldest first

    def prune_images(self, keep: int) -> list[Image]: ...  # the ones removed

    # -- appliances ---------------------------------------------------------------------------------
    def default_domain(self, name: str) -> str: ...

    def launch(self, spec: LaunchSpec, keep_on_failure: bool = False) -> Record: ...

    def stop(self, record: Record) -> None: ...  # a clean shutdown; disk, address and keys stay

    def start(self, record: Record) -> None: ...  # back, healthy, as it was

    def destroy(self, record: Record) -> None: ...

    def status(self, record: Record) -> str: ...


def get(s: Settings) -> Target:
    if s.target == "digitalocean":
        from appliance.targets.digitalocean import DigitalOceanTarget

        return DigitalOceanTarget(s)
    from appliance.targets.local import LocalTarget

    return LocalTarget(s)
