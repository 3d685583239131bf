"""Typed settings, read once from the invoke config (defaults → invoke.yaml → INVOKE_* → flags)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ExitStatus, die

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"

TARGETS = ("local", "digitalocean")
WEBCLIENTS = ("element", "hydrogen")
ACCELS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class Dirs:
    cache: Path
    state: Path
    output: Path


@dataclass(frozen=True)
class ImageSettings:
    suite: str
    mirror: str
    security_mirror: str
    disk_gb: int
    base_max_age_days: int
    extra_ca: tuple[Path, ...]


@dataclass(frozen=True)
class VmSettings:
    accel: str
    cpus: int
    memory_mb: int


@dataclass(frozen=True)
class DoSettings:
    region: str
    size: str
    base_image: str
    dns_zone: str
    operator_cidr: str
    ipv6: bool
    active_timeout: float
    api_url: str
    ca_bundle: str
    build_extra_ca: tuple[Path, ...]


@dataclass(frozen=True)
class Settings:
    target: str
    name: str
    domain: str
    contact_email: str
    webclient: str
    dirs: Dirs
    image: ImageSettings
    vm: VmSettings
    acme_directory: str
    acme_staging: bool
    acme_roots: str  # PEM roots the appliance's certificate chains to ("" = the system's CAs)
    do: DoSettings


def _path(value: str) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else REPO / path


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        die(
            f"{key} must be one of {', '.join(allowed)}, not {value!r}",
            hint="fix invoke.yaml or the flag",
            status=ExitStatus.USAGE,
        )
    return value


def _extra_ca(value: Any) -> tuple[Path, ...]:
    # Behind a TLS-inspecting proxy the build must trust the proxy's CA; the image must not keep it.
    if value in (None, "none", "", []):
        return ()
    if value == "auto":
        return tuple(sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt")))
    paths = tuple(_path(p) for p in ([value] if isinstance(value, str) else value))
    for p in paths:
        if not p.is_file():
            die(
                f"extra CA certificate {p} does not exist",
                hint="set outband.image.extra_ca to existing PEM files",
                status=ExitStatus.USAGE,
            )
    return paths


def load(raw: Mapping[str, Any], **overrides: Any) -> Settings:
    """Build Settings from the `outband` section of the invoke config plus non-None flag overrides."""
    o = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    dirs, image, vm = o["dirs"], o["image"], o["vm"]
    acme, do = o.get("acme", {}), o.get("digitalocean", {})
    return Settings(
        target=_choice("target", o["target"], TARGETS),
        name=o["name"],
        domain=o.get("domain") or "",
        contact_email=o.get("contact_email") or "",
        webclient=_choice("webclient", o["webclient"], WEBCLIENTS),
        dirs=Dirs(cache=_path(dirs["cache"]), state=_path(dirs["state"]), output=_path(dirs["output"])),
        image=ImageSettings(
            suite=image["suite"],
            mirror=image["mirror"],
            security_mirror=image["security_mirror"],
            disk_gb=int(image["disk_gb"]),
            base_max_age_days=int(image["base_max_age_days"]),
            extra_ca=_extra_ca(image.get("extra_ca", "auto")),
        ),
        vm=VmSettings(
            accel=_choice("vm.accel", vm["accel"], ACCELS), cpus=int(vm["cpus"]), memory_mb=int(vm["memory_mb"])
        ),
        acme_directory=acme.get("directory") or "",
        acme_staging=bool(acme.get("staging", False)),
        acme_roots=str(_path(acme["roots"])) if acme.get("roots") else "",
        do=DoSettings(
            region=do.get("region", "fra1"),
            size=do.get("size", "s-1vcpu-2gb"),
            base_image=do.get("base_image", "debian-13-x64"),
            dns_zone=do.get("dns_zone") or "",
            operator_cidr=do.get("operator_cidr") or "",
            ipv6=bool(do.get("ipv6", False)),
            active_timeout=float(do.get("active_timeout", 600)),
            api_url=do.get("api_url") or "https://api.digitalocean.com",
            ca_bundle=do.get("ca_bundle") or "",
            build_extra_ca=_extra_ca(do.get("build_extra_ca", "none")),
        ),
    )
