"""The system side of `invoke audit --system`: what auditd recorded on the appliance under the
rules in images/files/etc/audit/rules.d/outband.rules (reads of the secrets by a person, changes to
Synapse/coturn/nginx/sshd/sudo configs), every command run through sudo (sudo's own USER_CMD
record) and every SSH session (sshd's USER_START), as audit events.

Read with auditd's own `ausearch --format csv` (its normalized view: who, what action, on what,
how), in the C locale and UTC so that dates parse the same everywhere.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable

from appliance.audit import Event

# The rules' keys (-k) and what each means in the audit's table.
KEYS = {"outband-secret-read": "secret read", "outband-config": "config changed"}
# Records that programs write themselves (no rule needed).
SUDO, SESSION = "USER_CMD", "USER_START"
REMOTE = (
    "export LC_ALL=C TZ=UTC; "
    + "; ".join(
        f"ausearch --input-logs {what} --format csv --extra-keys 2>/dev/null"
        for what in [*(f"-k {k}" for k in KEYS), f"-m {SUDO}", f"-m {SESSION}"]
    )
    + "; true"
)  # ausearch exits 1 when it finds nothing


def _time(row: dict[str, str]) -> str:
    try:
        stamp = dt.datetime.strptime(f"{row['DATE']} {row['TIME']}", "%m/%d/%y %H:%M:%S").replace(tzinfo=dt.UTC)
    except (KeyError, ValueError):
        return row.get("DATE", "") + " " + row.get("TIME", "")
    return stamp.isoformat(timespec="seconds")


def _who(value: str) -> str:
    return "" if value in ("", "unset", "-1", "4294967295") else value


def rows(text: str) -> Iterable[dict[str, str]]:
    """Every row of every CSV block (each ausearch run prints its own header)."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("NODE,EVENT,") and current:
            blocks.append(current)
            current = []
        if line.strip():
            current.append(line)
    if current:
        blocks.append(current)
    for block in blocks:
        yield from csv.DictReader(io.StringIO("\n".join(block)))


def events(text: str) -> list[Event]:
    found = []
    for row in rows(text):
        kind, key, how = row.get("EVENT"), row.get("KEY", ""), row.get("HOW", "")
        who = _who(row.get("SUBJ_PRIME", ""))
        failed = row.get("RESULT") != "success"
        if kind == SESSION and how.endswith("sshd-session"):
            found.append(Event(_time(row), "ssh sign-in" + (" failed" if failed else ""), who or "?", client="sshd"))
        elif kind == SUDO:
            command = row.get("OBJ_PRIME", "")
            found.append(Event(_time(row), "sudo" + (" refused" if failed else ""), who or "?", detail=command))
        elif kind == "SYSCALL" and key in KEYS:
            path = row.get("OBJ_PRIME", "")
            found.append(Event(_time(row), KEYS[key], who or "(a service)", client=how, detail=path))
    return sorted(found, key=lambda e: e.time)
