"""Outband: bake, launch, verify and destroy disposable Matrix appliances. A thin menu over appliance/."""

from __future__ import annotations

from invoke import Collection, Context, task

from appliance import bake as bake_mod
from appliance import lock as lock_mod
from appliance import log
from appliance.cache import Cache
from appliance.cli import command, settings


@task(help={
    "target": "local (default) or digitalocean",
    "webclient": "element (pinned release) or hydrogen (built offline from npm)",
    "via": "local target only: chroot (fast, default) or packer (the Packer qemu source, live system)",
})
def bake(c: Context, target: str | None = None, webclient: str | None = None, via: str = "chroot") -> None:
    """Build a hardened appliance image from Debian packages and pinned artifacts."""
    s = settings(c, target=target, webclient=webclient)
    with command("bake", s):
        image = bake_mod.bake(s)
        log.console.print(f"image: {image.path} ({image.size / 2**20:.0f} MiB)")
        log.console.print(f"sbom:  {image.sbom}")
        log.console.print(f"log:   {log.log_path()}")


@task
def lock(c: Context) -> None:
    """Re-resolve images/lock/synapse.txt (versions + hashes) for the image's Python."""
    s = settings(c)
    with command("lock", s):
        lock_mod.lock(s, Cache(s.dirs.cache))


ns = Collection(bake, lock)
