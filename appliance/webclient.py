"""The web client, as one tar of static files for 30-webclient.sh.

- element (default): the pinned Element web release tarball, fetched into the artifact cache and
  checked against its sha256; when it cannot be fetched, a one-line error says how to provide it.
- hydrogen: built offline from the npm registry (hydrogen-view-sdk + olm, bundled by Vite around a
  short entry module), cached by the hash of its recipe and lock file.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance import http, log
from appliance.cache import Cache, digest, hash_file
from appliance.config import IMAGES
from appliance.errors import ExitStatus, OutbandError, die
from appliance.run import run

HYDROGEN = IMAGES / "webclient/hydrogen"
ELEMENT_PIN = IMAGES / "lock/element.json"
HYDROGEN_RECIPE = ["package.json", "package-lock.json", "index.html", "main.js", "vite.config.js"]


@dataclass(frozen=True)
class WebClient:
    name: str
    version: str
    tar: Path  # static files at the tar's root
    sha256: str  # of the release tarball (element) or of the built tar (hydrogen)
    components: list[dict]  # for the SBOM


def _tar_directory(src: Path, out: Path) -> None:
    """A deterministic tar: sorted names, fixed owner and time, so equal builds give equal hashes."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False, filter=normalize)


def element(cache: Cache, pin_file: Path = ELEMENT_PIN) -> WebClient:
    pin = json.loads(pin_file.read_text())
    download = cache.path("downloads", f"element-v{pin['version']}", ".tar.gz")
    if not download.exists():
        with log.step(f"Fetch Element web v{pin['version']}"):
            download.parent.mkdir(parents=True, exist_ok=True)
            try:
                http.download(pin["url"], download)
            except OutbandError as e:
                die(
                    f"cannot fetch Element web v{pin['version']} ({e.message})",
                    hint=f"put {Path(pin['url']).name} (sha256 {pin['sha256'][:12]}…) at {download}, "
                    "or bake with --webclient hydrogen",
                    status=ExitStatus.ERROR,
                )
    actual = hash_file(download)
    if actual != pin["sha256"]:
        die(
            f"{download.name} has sha256 {actual[:12]}…, the pin in images/lock/element.json says "
            f"{pin['sha256'][:12]}…",
            hint=f"delete {download} and fetch it again, or fix the pin",
        )
    out = cache.path("webclient", f"element-{pin['sha256'][:16]}", ".tar")
    if not out.exists():
        with tempfile.TemporaryDirectory(dir=cache.root) as tmp_dir:
            root = Path(tmp_dir) / "x"
            root.mkdir()
            with tarfile.open(download) as tar:
                tar.extractall(root, filter="data")
            tops = list(root.iterdir())
            src = tops[0] if len(tops) == 1 and tops[0].is_dir() else root  # element-vX.Y.Z/…
            tmp = cache.tmp(out)
            _tar_directory(src, tmp)
            cache.commit(tmp, out)
    return WebClient(
        "element-web",
        pin["version"],
        out,
        pin["sha256"],
        [{"name": "element-web", "version": pin["version"], "sha256": pin["sha256"], "source": pin["url"]}],
    )


def hydrogen_components() -> list[dict]:
    lock = json.loads((HYDROGEN / "package-lock.json").read_text())
    return [
        {
            "name": path.removeprefix("node_modules/"),
            "version": meta["version"],
            "integrity": meta.get("integrity", ""),
            "dev": bool(meta.get("dev", False)),
        }
        for path, meta in sorted(lock["packages"].items())
        if path
    ]


def hydrogen(cache: Cache) -> WebClient:
    key = digest("hydrogen-v2", *[HYDROGEN / name for name in HYDROGEN_RECIPE])
    out = cache.path("webclient", f"hydrogen-{key[:16]}", ".tar")
    version = json.loads((HYDROGEN / "package.json").read_text())["dependencies"]["hydrogen-view-sdk"]
    if not out.exists():
        with (
            log.step(f"Build Hydrogen {version} from npm (offline-capable)"),
            tempfile.TemporaryDirectory(dir=cache.root, prefix="hydrogen-") as tmp_dir,
        ):
            work = Path(tmp_dir)
            for name in HYDROGEN_RECIPE:
                shutil.copyfile(HYDROGEN / name, work / name)
            npm_cache = cache.root / "npm"
            # --ignore-scripts: nothing from the registry runs code on the builder.
            run(
                ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--cache", npm_cache],
                cwd=work,
                what="npm ci (Hydrogen)",
                hint="is the npm registry reachable?",
            )
            # Hydrogen's service worker, served from the site's root as Hydrogen's own build does
            # (main.js says why it is needed); Vite copies public/ as it is.
            (work / "public").mkdir()
            shutil.copyfile(work / "node_modules/hydrogen-view-sdk/lib-build/sw.js", work / "public/sw.js")
            run([work / "node_modules/.bin/vite", "build"], cwd=work, what="vite build (Hydrogen)")
            tmp = cache.tmp(out)
            _tar_directory(work / "dist", tmp)
            cache.commit(tmp, out)
    return WebClient("hydrogen-web", version, out, hash_file(out), hydrogen_components())


def prepare(name: str, cache: Cache) -> WebClient:
    return element(cache) if name == "element" else hydrogen(cache)
