"""What every task shares: settings from the invoke context, a log file, errors → exit statuses."""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
from collections.abc import Iterator
from typing import Any

from invoke import Context, Exit

from appliance import config, log
from appliance.errors import ExitStatus, OutbandError, Terminated


def settings(c: Context, **overrides: Any) -> config.Settings:
    return config.load(c.config.outband, **overrides)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def command(name: str, c: Context, log_file: bool = True, **overrides: Any) -> Iterator[config.Settings]:
    """Settings for the task, the run's log file; user errors, Ctrl-C and SIGTERM → one line and an
    exit status (after the same clean-up as Ctrl-C)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        s = settings(c, **overrides)
        if log_file:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            log.open_log(s.dirs.output / "logs" / f"{name}-{stamp}.log")
        yield s
    except OutbandError as e:
        message = f"error: {e.message}"
        if e.hint:
            message += f"\n  hint: {e.hint}"
        log.logger.error(message)
        raise Exit(message, code=int(e.status)) from None
    except Terminated:
        log.logger.error("terminated")
        raise Exit("terminated", code=int(ExitStatus.TERMINATED)) from None
    except KeyboardInterrupt:
        log.logger.error("interrupted")
        raise Exit("interrupted", code=int(ExitStatus.INTERRUPTED)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
