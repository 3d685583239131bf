"""Reading systemd's answers: one parser for `systemctl show` (used by the launcher, verify and tests)."""

from __future__ import annotations


def parse_show(text: str) -> list[dict[str, str]]:
    """`systemctl show [-p …] UNIT…` → one dict of properties per unit (blocks split by blank lines)."""
    units = []
    for block in text.strip("\n").split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props:
            units.append(props)
    return units


def show_one(text: str) -> dict[str, str]:
    """The properties of the single unit a `systemctl show` was asked about ({} for no answer)."""
    units = parse_show(text)
    return units[0] if units else {}
