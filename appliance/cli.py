"""What every task shares: settings from the invoke context, a log file, errors → exit statuses."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from invoke import Context, Exit

from appliance import config, log
from appliance.errors import ExitStatus, OutbandError


def settings(c: Context, **overrides: Any) -> config.Settings:
    return config.load(c.config.outband, **overrides)


@contextlib.contextmanager
def command(name: str, s: config.Settings | None = None) -> Iterator[None]:
    """Open the run's log file; turn user errors and Ctrl-C into one line and an exit status."""
    if s is not None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        log.open_log(s.dirs.output / "logs" / f"{name}-{stamp}.log")
    try:
        yield
    except OutbandError as e:
        message = f"error: {e.message}"
        if e.hint:
            message += f"\n  hint: {e.hint}"
        log.logger.error(message)
        raise Exit(message, code=int(e.status)) from None
    except KeyboardInterrupt:
        log.logger.error("interrupted")
        raise Exit("interrupted", code=int(ExitStatus.INTERRUPTED)) from None
