"""Content-addressed cache of expensive build artifacts, keyed by the hash of their inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any


def digest(*parts: Any) -> str:
    """A stable hash of strings, bytes, files, directories and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_dir():
                for p in sorted(part.rglob("*")):
                    if p.is_file():
                        h.update(str(p.relative_to(part)).encode() + b"\0")
                        h.update(hash_file(p).encode())
            else:
                h.update(hash_file(part).encode())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Cache:
    """`<root>/<kind>/<key>` entries, written atomically (tmp name, then rename)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, kind: str, key: str, suffix: str = "") -> Path:
        return self.root / kind / f"{key}{suffix}"

    def fresh(self, path: Path, max_age_days: float | None = None) -> bool:
        if not path.exists():
            return False
        if max_age_days is None:
            return True
        return time.time() - path.stat().st_mtime < max_age_days * 86400

    def tmp(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.tmp-{os.getpid()}")

    def commit(self, tmp: Path, final: Path) -> Path:
        if final.is_dir():
            shutil.rmtree(final)
        tmp.replace(final)
        return final

    def prune(self, kind: str, keep: set[Path]) -> None:
        """Drop entries of a kind that are no longer referenced (old layers, stale bases)."""
        folder = self.root / kind
        if not folder.is_dir():
            return
        for p in folder.iterdir():
            if p not in keep and not p.name.startswith("."):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
