"""Appliances known on this machine: one directory each under the state dir (0700, files 0600).

The launcher records what it creates *as it creates it* (process ids, files, addresses, cloud
resource ids), so `destroy` — and a failed launch's cleanup — removes exactly that.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ExitStatus, die


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, content: str | bytes) -> Path:
    """Write a file that is 0600 from its first byte (never briefly world-readable)."""
    data = content.encode() if isinstance(content, str) else content
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
    return path


SHRED_LIMIT = 1 << 20


def shred(path: Path) -> None:
    """Overwrite a secret file once with random bytes before unlinking it."""
    if path.is_file() and not path.is_symlink():
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.write(os.urandom(size))
            f.flush()
            os.fsync(f.fileno())
    path.unlink(missing_ok=True)


@dataclass
class Record:
    """What exists for one appliance. Saved after every change."""

    dir: Path
    name: str
    target: str
    status: str = "creating"
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return self.dir / "appliance.json"

    def save(self) -> None:
        write_private(
            self.file,
            json.dumps(
                {"name": self.name, "target": self.target, "status": self.status, "data": self.data},
                indent=2,
                sort_keys=True,
            )
            + "\n",
        )

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.save()

    def path(self, name: str) -> Path:
        return self.dir / name


class Store:
    def __init__(self, root: Path):
        self.root = root

    def dir_for(self, name: str) -> Path:
        return self.root / "appliances" / name

    def ensure_free(self, name: str) -> None:
        """Refuse a name in use before anything is made for a new appliance."""
        if self.dir_for(name).exists():
            die(
                f"an appliance named {name!r} already exists",
                hint=f"pick another --name or `invoke destroy {name}`",
                status=ExitStatus.USAGE,
            )

    def create(self, name: str, target: str) -> Record:
        self.ensure_free(name)
        folder = self.dir_for(name)
        private_dir(self.root)
        private_dir(self.root / "appliances")
        folder.mkdir(mode=0o700)
        record = Record(folder, name, target)
        record.save()
        return record

    def get(self, name: str) -> Record | None:
        file = self.dir_for(name) / "appliance.json"
        if not file.exists():
            return None
        raw = json.loads(file.read_text())
        return Record(file.parent, raw["name"], raw["target"], raw["status"], raw["data"])

    def require(self, name: str) -> Record:
        record = self.get(name)
        if record is None:
            die(f"no appliance named {name!r} on this machine", hint="`invoke ls` lists them", status=ExitStatus.USAGE)
        return record

    def all(self) -> list[Record]:
        folder = self.root / "appliances"
        if not folder.is_dir():
            return []
        records = [self.get(p.name) for p in sorted(folder.iterdir()) if p.is_dir()]
        return [r for r in records if r is not None]

    def remove(self, record: Record) -> None:
        """Shred every file of the record (keys, secrets, seed), then the directory."""
        if not record.dir.exists():
            return
        for path in sorted(record.dir.rglob("*"), reverse=True):
            # Keys, secrets and the seed are small; the disk overlay is big and is only unlinked
            # (overwriting it would cost seconds and the host's file system may not honour it anyway).
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= SHRED_LIMIT:
                shred(path)
            elif path.is_file() or path.is_symlink():
                path.unlink()
        shutil.rmtree(record.dir, ignore_errors=True)
