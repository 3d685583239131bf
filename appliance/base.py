"""The base root tree: Debian packages only (mmdebstrap), cached by its inputs.

mmdebstrap is reproducible with SOURCE_DATE_EPOCH set (debootstrap is not: machine-id, ldconfig
aux-cache, man-db): the tree depends on the recipe and on what Debian's archive serves. So the cache
keeps it by both (archive_state), and a bake after any Debian update starts from a new tree, the
same one `bake --check` makes from scratch. `base_max_age_days` bounds its age besides.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance import http, log, sbom
from appliance.cache import Cache, digest
from appliance.config import IMAGES, Settings
from appliance.errors import OutbandError, die
from appliance.run import run

BASE = IMAGES / "base"
# Fixed timestamp for reproducible trees; bump together with the recipe, not per build.
SOURCE_DATE_EPOCH = "1764115200"  # 2025-11-26


def packages() -> list[str]:
    lines = (BASE / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def mirrors(s: Settings) -> list[str]:
    suite = s.image.suite
    return [
        f"deb {s.image.mirror} {suite} main",
        f"deb {s.image.mirror} {suite}-updates main",
        f"deb {s.image.security_mirror} {suite}-security main",
    ]


def archive_state(s: Settings) -> dict[str, str]:
    """When Debian's archive last changed each of the image's suites: the `Date:` of its Release file.

    Why: provision layers are cached, and a layer holds the packages Debian served when it was made.
    Keyed by this too, a cached layer serves only bakes that would install the same packages; after
    any Debian update (a security fix) the next bake re-runs the scripts instead of shipping a
    cached layer's older packages. Read over plain HTTP like apt's own downloads; apt still checks
    every signature, this is only a cache key.
    """
    state = {}
    for source in mirrors(s):
        _, mirror, suite, _ = source.split()
        url = f"{mirror}/dists/{suite}/Release"
        try:
            head = http.get(url, limit=8192).decode(errors="replace")
        except OutbandError as e:
            die(
                f"cannot read {url}: {e.message}",
                hint="a bake installs Debian's current packages: check the network and image.mirror in invoke.yaml",
            )
        date = next((line[5:].strip() for line in head.splitlines() if line.startswith("Date:")), None)
        if date is None:
            die(f"{url} has no Date: field", hint="is image.mirror a Debian mirror?")
        state[suite] = date
    return state


def key(s: Settings) -> str:
    return digest("base-v1", s.image.suite, mirrors(s), SOURCE_DATE_EPOCH, BASE)


# Where a pinned bake's apt preferences live in the tree, from the base's first apt run until the
# seal (images/provision/90-seal.sh removes it).
PIN_FILE = "etc/apt/preferences.d/outband-pin"


def pin_preferences(pins: dict[str, str]) -> str:
    """apt_preferences(5) that make apt choose exactly these versions, over newer ones."""
    return "".join(f"Package: {n}\nPin: version {v}\nPin-Priority: 1001\n\n" for n, v in sorted(pins.items()))


def check_pins(installed: dict[str, str], pins: dict[str, str], where: str) -> None:
    """No silent upgrade: a pinned package installed at any other version fails the bake, naming it."""
    off = {n: (pins[n], v) for n, v in sorted(installed.items()) if n in pins and pins[n] != v}
    if off:
        shown = ", ".join(f"{n} {want} (got {got})" for n, (want, got) in list(off.items())[:5])
        more = f" and {len(off) - 5} more" if len(off) > 5 else ""
        die(
            f"Debian's archive no longer serves {len(off)} pinned package version(s) ({where}): {shown}{more}",
            hint="a Debian mirror keeps only current versions: for older ones set image.mirror and "
            "image.security_mirror to snapshot.debian.org/archive/… of the manifest's debian_archive dates",
        )


def mmdebstrap_argv(s: Settings, target: Path, pin_file: Path | None = None) -> list[str]:
    # A pinned bake: the preferences are in the tree before its first apt run, and stay for the
    # provision scripts' apt runs.
    hook = f'--setup-hook=mkdir -p "$1/{Path(PIN_FILE).parent}" && cp {pin_file} "$1/{PIN_FILE}"'
    pinned = [hook] if pin_file else []
    return [
        "mmdebstrap",
        *pinned,
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(packages()),
        # No man pages or docs in an appliance; copyright files stay (licences, SBOM).
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        f'--customize-hook={BASE / "customize.sh"} "$1"',
        s.image.suite,
        str(target),
        *mirrors(s),
    ]


def ensure(s: Settings, cache: Cache, archive: dict[str, str]) -> Path:
    """The cached base tree for these settings and this archive state, building it if missing or too old."""
    final = cache.path("base", digest(key(s), archive))
    if cache.fresh(final, s.image.base_max_age_days):
        log.detail(f"base tree from cache: {final}")
        return final
    tmp = cache.tmp(final)
    build(s, tmp, cache.root)
    cache.prune("base", keep=set())
    return cache.commit(tmp, final)


def build(s: Settings, target: Path, tmpdir: Path, pins: dict[str, str] | None = None) -> Path:
    """A base tree made now in `target` (the cache's, or a rebuild's own, which must not start from
    the cached tree), with exactly the `pins` versions where given."""
    pin_file = None
    if pins:
        pin_file = tmpdir / "outband-pin.pref"
        pin_file.write_text(pin_preferences(pins))
    with log.step(f"Base tree: Debian {s.image.suite} from packages (mmdebstrap)"):
        if target.exists():
            shutil.rmtree(target)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
            "TMPDIR": str(tmpdir),
        }
        try:
            run(
                mmdebstrap_argv(s, target, pin_file),
                what="mmdebstrap",
                env=env,
                hint="check that the Debian mirror is reachable and the disk has ~2 GB free",
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    if pins:
        check_pins({d["name"]: d["version"] for d in sbom.debian_packages(target)}, pins, "base tree")
    return target
