"""An image's content listing: one line per path of its file system — kind, sha256 of a file's
bytes, mode, owner, a link's target — so two images can be compared without booting or mounting
them (`invoke images --diff A B`); and, for `invoke bake --check`, the same listing and short
diffs from two images mounted read-only (appliance/disk.py: mounted_root).

Kept beside the manifest as `<image>.files.tsv.gz` (a manifest with ~30,000 entries inline would be
unreadable); the manifest records the listing's sha256, so the listing is as trustworthy as the
manifest. Timestamps are not listed: they say when a file was written, not what the image is.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

Listing = dict[str, str]  # "/etc/hostname" → "file sha256=… mode=0644 owner=0:0"


def describe(path: Path) -> str:
    st = path.lstat()
    owner = f"owner={st.st_uid}:{st.st_gid}"
    mode = f"mode={stat.S_IMODE(st.st_mode):04o}"
    if stat.S_ISLNK(st.st_mode):
        return f"link -> {path.readlink()} {owner}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir {mode} {owner}"
    if stat.S_ISREG(st.st_mode):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return f"file sha256={digest} {mode} {owner}"
    kind = "char" if stat.S_ISCHR(st.st_mode) else "block" if stat.S_ISBLK(st.st_mode) else "special"
    return f"{kind} {mode} {owner} rdev={os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def listing(root: Path) -> Listing:
    """Every path under `root` (a provisioned tree), as the image will hold it."""
    found: Listing = {"/": describe(root)}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        for name in [*dirs, *sorted(files)]:
            path = here / name
            found["/" + str(path.relative_to(root))] = describe(path)
    return found


def listing_of_disk(root: Path) -> Listing:
    """The listing of an image's mounted root file system: as its tree's, less what mke2fs adds."""
    entries = listing(root)
    entries.pop("/lost+found", None)
    return entries


def dump(entries: Listing) -> bytes:
    """Gzipped TSV, byte-identical for identical listings (sorted, no name or time in the gzip header)."""
    text = "".join(f"{path}\t{entries[path]}\n" for path in sorted(entries))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(text.encode())
    return buffer.getvalue()


def load(path: Path) -> Listing:
    entries: Listing = {}
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        name, _, what = line.partition("\t")
        entries[name] = what
    return entries


@dataclass(frozen=True)
class Difference:
    path: str
    change: str  # "added", "removed" or "changed"
    before: str
    after: str

    def what(self) -> str:
        """Which attributes changed, in a few words ("sha256", "mode, owner", "kind")."""
        if self.change != "changed":
            return self.change
        old, new = _fields(self.before), _fields(self.after)
        if old.get("kind") != new.get("kind"):
            return "kind"
        return ", ".join(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _fields(description: str) -> dict[str, str]:
    kind, _, rest = description.partition(" ")
    if kind == "link":
        target, _, owner = rest.rpartition(" ")
        return {"kind": kind, "target": target.removeprefix("-> "), "owner": owner.removeprefix("owner=")}
    fields = {"kind": kind}
    for part in rest.split():
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


def diff(a: Listing, b: Listing) -> list[Difference]:
    """What differs from `a` to `b`, by path."""
    out = []
    for path in sorted(set(a) | set(b)):
        before, after = a.get(path), b.get(path)
        if before == after:
            continue
        change = "added" if before is None else "removed" if after is None else "changed"
        out.append(Difference(path, change, before or "", after or ""))
    return out


DIFF_MAX_BYTES = 1 << 20  # larger files: only their hashes are compared
DIFF_MAX_LINES = 40


def show_difference(a_root: Path, b_root: Path, path: str, labels: tuple[str, str] = ("a", "b")) -> str:
    """A short look at how a file changed between two mounted images: a unified diff for text
    (its sides named by `labels`), Debian's diffoscope (where installed) for anything else; empty
    when neither applies."""
    a, b = a_root / path.lstrip("/"), b_root / path.lstrip("/")
    if a.is_symlink() or b.is_symlink() or not (a.is_file() and b.is_file()):
        return ""
    if max(a.stat().st_size, b.stat().st_size) > DIFF_MAX_BYTES:
        return ""
    try:
        old, new = a.read_text(), b.read_text()
    except UnicodeDecodeError:
        return _diffoscope(a, b)
    before, after = (f"{label}{path}" for label in labels)
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), before, after, n=1, lineterm=""))
    if len(lines) > DIFF_MAX_LINES:
        lines = [*lines[:DIFF_MAX_LINES], f"… {len(lines) - DIFF_MAX_LINES} more lines"]
    return "\n".join(lines)


def _diffoscope(a: Path, b: Path) -> str:
    if shutil.which("diffoscope") is None:
        return ""
    result = subprocess.run(
        ["diffoscope", "--text", "-", "--max-text-report-size", "4000", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout.strip()
