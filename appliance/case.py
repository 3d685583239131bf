"""The case record from the operator's side: export it over the pinned SSH channel, check it, and
keep destroy from throwing away what was not exported."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

from appliance import casefile, contract, log, ssh
from appliance.config import Settings
from appliance.errors import ExitStatus, die
from appliance.state import Record, Store, private_dir, write_private

REMOTE = contract.constants()["paths"]["case_dir"]
SHA256 = re.compile(r"[0-9a-f]{64}")


def _remote(record: Record, command: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """A command on the appliance as root (the case folder is the recorder's), its output as bytes."""
    return subprocess.run(
        ssh.argv(record, f"sudo {command}"),
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _case_key(record: Record) -> str | None:
    """The case record's public key the launcher kept; None for an appliance launched without one."""
    path = record.path("facts.json")
    return json.loads(path.read_text()).get("case_public_key") if path.exists() else None


def _public_key(record: Record) -> str:
    key = _case_key(record)
    if key is None:
        die(f"{record.name} has no case key (launched without one)", hint="only a launched appliance records a case")
    return key


def remote_manifest(record: Record) -> dict | None:
    """The appliance's signed manifest; None when nothing has been recorded yet."""
    result = _remote(record, f"cat {REMOTE}/manifest.json", timeout=60)
    if result.returncode == 0:
        return json.loads(result.stdout)
    err = result.stderr.decode(errors="replace").strip()
    if "No such file" in err:
        return None
    die(
        f"cannot read {record.name}'s case record: {err.splitlines()[-1] if err else f'ssh exit {result.returncode}'}",
        hint=f"is it running? `invoke start --name {record.name}`",
    )


def _complete(path: Path) -> int:
    """Cut an interrupted export's partial last line; the number of whole lines kept."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        write_private(path, data)
    return data.count(b"\n")


def export(s: Settings, name: str, out: Path | None) -> Path:
    record = Store(s.dirs.state).require(name)
    key = _public_key(record)
    out = private_dir(out or Path("cases") / name)
    doc = remote_manifest(record)
    if doc is None:
        log.out.print(f"{name} has recorded nothing yet (no room has invited the case recorder)")
        return out
    manifest = doc["manifest"]
    total = manifest["events"]
    earlier = json.loads((out / "export.json").read_text()) if (out / "export.json").exists() else {}
    if earlier and earlier.get("case_public_key") != key:
        die(
            f"{out} holds another case's export ({earlier.get('appliance')}, key {earlier.get('key_fingerprint')})",
            hint="export into an empty directory with --out",
            status=ExitStatus.USAGE,
        )
    events = out / "events.jsonl"
    had = _complete(events)
    if had > total:
        die(
            f"{out} holds {had} events, more than {name}'s record ({total}): it is another case's export",
            hint="export into an empty directory with --out",
            status=ExitStatus.USAGE,
        )
    added = 0
    if had < total:
        offset = events.stat().st_size if events.exists() else 0
        result = _remote(record, f"tail -c +{offset + 1} {REMOTE}/events.jsonl")
        if result.returncode != 0:
            die(f"reading {name}'s events failed: {result.stderr.decode(errors='replace').strip()[-300:]}")
        # The record may have grown since the manifest was read: exactly the lines it signed.
        new = result.stdout.splitlines(keepends=True)[: total - had]
        fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # 0600 from its first byte
        with os.fdopen(fd, "ab") as f:
            f.writelines(new)
        added = len(new)
    media_dir = private_dir(out / "media")
    bad = [d for d in manifest["media"] if not SHA256.fullmatch(d)]
    if bad:  # names that go into a path here and a command there: never anything but a hash
        die(
            f"{name}'s manifest names media that are not SHA-256 hashes: {', '.join(map(repr, bad[:3]))}",
            hint="the record on the appliance was changed; keep it and investigate",
            status=ExitStatus.VERIFY_FAILED,
        )
    missing = [d for d in manifest["media"] if not (media_dir / d).exists()]
    if missing:
        result = _remote(record, f"tar -C {REMOTE} -cf - " + " ".join(f"media/{d}" for d in missing))
        if result.returncode != 0:
            die(f"reading {name}'s media failed: {result.stderr.decode(errors='replace').strip()[-300:]}")
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
            for member in tar.getmembers():
                digest = Path(member.name).name
                if member.isfile() and digest in missing:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr] -- a regular file
                    write_private(media_dir / digest, data)
    write_private(out / "manifest.json", json.dumps(doc) + "\n")
    problems = casefile.check(out, key)
    if problems:
        for p in problems:
            log.console.print(f"[red]{p}[/]")
        die(
            f"the exported record of {name} does not verify ({len(problems)} problems)",
            hint="the record on the appliance or in transit was changed; keep both and investigate",
            status=ExitStatus.VERIFY_FAILED,
        )
    about = {
        "case": manifest["case"],
        "appliance": name,
        "exported": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "case_public_key": key,
        "key_fingerprint": casefile.key_fingerprint(key),
        "events": total,
        "head": manifest["head"],
    }
    write_private(out / "export.json", json.dumps(about, indent=2) + "\n")
    index = casefile.render(out, about)
    record.set(case_exported={"events": total, "head": manifest["head"]})
    log.out.print(
        f"exported {added} new events and {len(missing)} new media files of {name} to {out} "
        f"({total} events, {len(manifest['media'])} media in all); chain and signature verified"
    )
    log.out.print(f"open {index}")
    return out


def verify(folder: Path, key: str | None) -> None:
    """An exported case, offline. The key: --key, else the one the export wrote down at the time (from
    the launcher's state, never from the appliance)."""
    if not (folder / "events.jsonl").exists() and not (folder / "manifest.json").exists():
        die(
            f"{folder} is not an exported case",
            hint="run `invoke case.export --out DIR` first",
            status=ExitStatus.USAGE,
        )
    about = json.loads((folder / "export.json").read_text()) if (folder / "export.json").exists() else {}
    key = key or about.get("case_public_key")
    if not key:
        die("no case key to check against", hint="pass --key (the case_public_key in the appliance's facts.json)")
    problems = casefile.check(folder, key)
    lines = len(casefile.read_lines(folder))
    if problems:
        for p in problems:
            print(p)
        die(
            f"{folder}: the case record does not verify ({len(problems)} problems)",
            hint="the first position named is where it was changed",
            status=ExitStatus.VERIFY_FAILED,
        )
    log.out.print(f"{folder}: {lines} events, chain intact, signed by case key {casefile.key_fingerprint(key)}")


def unexported(record: Record) -> int:
    """How many recorded events the appliance holds that no export has taken."""
    if _case_key(record) is None:
        return 0  # never launched with a recorder (a bare boot, an unfinished launch)
    doc = remote_manifest(record)
    recorded = doc["manifest"]["events"] if doc else 0
    return recorded - record.data.get("case_exported", {}).get("events", 0)
