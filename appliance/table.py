"""Every command's tabular output, the same way: a table on a terminal (wrapped, never cut), one
tab-separated line per row when piped (a header line first), or JSON (`--json`)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.table import Table as RichTable

from appliance import log


class Table:
    def __init__(self, *columns: str):
        self.columns = columns
        self.rows: list[tuple[str, ...]] = []

    def add(self, *values: Any) -> None:
        self.rows.append(tuple("" if v is None else str(v) for v in values))

    @property
    def keys(self) -> list[str]:
        """The columns' names for JSON: "time (UTC)" → "time", "device name" → "device_name"."""
        return [c.split(" (")[0].replace(" ", "_") for c in self.columns]

    def as_dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.keys, row, strict=True)) for row in self.rows]

    def show(self, as_json: bool = False, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        if as_json:
            stream.write(json.dumps(self.as_dicts(), indent=2) + "\n")
        elif stream.isatty():
            table = RichTable(*self.columns)
            for column in table.columns:
                column.overflow = "fold"
            for row in self.rows:
                table.add_row(*row)
            log.out.print(table)
        else:
            for row in [self.columns, *self.rows]:
                stream.write("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row) + "\n")
        stream.flush()
