"""The ordered provision scripts: staging their inputs, and running them in a chroot with a layer cache.

Each script declares what it reads from the stage in an `# inputs:` line. A script's layer key is
the previous key + the script + its inputs, so changing one script (or one input) re-runs only it
and what follows; the tree after any slow script is kept as a layer in the artifact cache.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import base, chroot, log
from appliance.cache import Cache, digest
from appliance.config import IMAGES
from appliance.errors import die
from appliance.run import run

PROVISION = IMAGES / "provision"
STAGE_IN_TREE = "tmp/outband-stage"
SEAL = "90-seal.sh"
LAYER_MIN_SECONDS = 8.0  # keep the tree after scripts slower than this
_INPUTS = re.compile(r"^# inputs:\s*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Script:
    path: Path
    inputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name


def scripts() -> list[Script]:
    found = []
    for path in sorted(PROVISION.glob("[0-9][0-9]-*.sh")):
        match = _INPUTS.search(path.read_text())
        if match is None:
            die(f"{path.name} has no '# inputs:' line", hint="declare what it reads from the stage, or '-'")
        names = tuple(n for n in match.group(1).split() if n != "-")
        found.append(Script(path, names))
    if not found or found[-1].name != SEAL:
        die(f"the last provision script must be {SEAL}", hint="the seal and its gate run last on every path")
    return found


def stage(dest: Path, webclient_tar: Path, extra_ca: tuple[Path, ...]) -> Path:
    """Everything the scripts read, in one directory: uploaded by Packer, copied into a chroot."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(PROVISION, dest / "provision")
    shutil.copytree(IMAGES / "files", dest / "files")
    shutil.copytree(IMAGES / "lock", dest / "lock")
    shutil.copyfile(IMAGES / "seal-gate.py", dest / "seal-gate.py")
    shutil.copyfile(webclient_tar, dest / "webclient.tar")
    (dest / "extra-ca").mkdir()
    for i, cert in enumerate(extra_ca):
        shutil.copyfile(cert, dest / "extra-ca" / f"extra-{i}.crt")
    return dest


def layer_keys(base_key: str, stage_dir: Path) -> list[tuple[Script, str]]:
    keys, key = [], base_key
    for script in scripts():
        # Each input by its name and its content (never by the stage's own, temporary, path).
        inputs = [part for name in script.inputs for part in (name, stage_dir / name)]
        key = digest(key, stage_dir / "provision" / script.name, *inputs)  # the copy that runs
        keys.append((script, key))
    return keys


def build_env() -> dict[str, str]:
    """What the scripts see of the build besides the stage; it shapes their output, so it is part
    of every layer's key. SOURCE_DATE_EPOCH: tools that stamp a time into a file (shadow's
    last-password-change day, systemd-update-done…) write the recipe's fixed date, not today's."""
    return {"SOURCE_DATE_EPOCH": base.SOURCE_DATE_EPOCH}


def cache_keys(base_key: str, stage_dir: Path, archive: dict[str, str]) -> list[tuple[Script, str]]:
    """Where each script's layer is cached: its recipe key plus Debian's archive state (the recipe
    names the packages, the archive decides their versions; base.archive_state says why) and the
    build environment."""
    return [(script, digest(key, archive, build_env())) for script, key in layer_keys(base_key, stage_dir)]


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    run(["cp", "-a", src, dst], what=f"copy tree {src.name}")


def run_in_tree(tree: Path, script: Script, binds: dict[str, Path], env: dict[str, str]) -> None:
    with chroot.mounted(tree, binds):
        run(
            ["chroot", tree, "/bin/sh", "-eu", f"/{STAGE_IN_TREE}/provision/{script.name}"],
            what=f"provision script {script.name}",
            env=env,
        )


def provision_tree(
    base_tree: Path,
    base_key: str,
    stage_dir: Path,
    work: Path,
    cache: Cache,
    archive: dict[str, str],
    use_layers: bool = True,
    pinned: bool = False,
) -> Path:
    """Build the sealed tree in `work`: nearest cached layer (unless told not to), then the remaining
    scripts. A `pinned` bake (exact package versions: `--packages-from`, `bake --check`) neither
    reads nor writes the layer cache: its trees are not what the keys say, and the cache stays the
    everyday bakes' (a check does not throw their layers away)."""
    keyed = cache_keys(base_key, stage_dir, archive)
    start = 0
    source = base_tree
    for i in range(len(keyed) - 1 if use_layers and not pinned else -1, -1, -1):
        layer = cache.path("layers", keyed[i][1])
        if keyed[i][0].name != SEAL and layer.is_dir():
            start, source = i + 1, layer
            break
    label = "base tree" if start == 0 else f"cached layer after {keyed[start - 1][0].name}"
    with log.step(f"Start from the {label}"):
        copy_tree(source, work)
    chroot.use_host_resolver(work)
    shutil.rmtree(work / STAGE_IN_TREE, ignore_errors=True)  # a layer holds the stage of its bake
    shutil.copytree(stage_dir, work / STAGE_IN_TREE)
    env = chroot.clean_env(
        {
            "OUTBAND_STAGE": f"/{STAGE_IN_TREE}",
            # After 00-build-ca this bundle also holds the build-time extra CAs (proxies).
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            **build_env(),
        }
    )
    # Download caches shared across bakes; never bound during the seal (it cleans caches).
    binds = {"/var/cache/apt/archives": cache.root / "apt-archives", "/root/.cache/pip": cache.root / "pip"}
    keep = {cache.path("layers", key) for _, key in keyed}
    for script, key in keyed[start:]:
        started = time.monotonic()
        with log.step(f"Provision {script.name}"):
            run_in_tree(work, script, {} if script.name == SEAL else binds, env)
        if not pinned and script.name != SEAL and time.monotonic() - started >= LAYER_MIN_SECONDS:
            layer = cache.path("layers", key)
            tmp = cache.tmp(layer)
            copy_tree(work, tmp)
            cache.commit(tmp, layer)
    if not pinned:
        cache.prune("layers", keep)
    return work
