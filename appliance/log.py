"""Live progress (phase + elapsed) on the terminal, full detail in a log file.

Every build phase is a `with step("…"):` block (mkosi's complete_step): the terminal shows a
spinner with the phase and its elapsed time, the log file gets everything, including the full
output of every command. On success the terminal stays quiet apart from one line per phase.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)  # progress and messages
out = Console(highlight=False, soft_wrap=True)  # results (tables, paths, URLs): stdout, so they can be piped
logger = logging.getLogger("outband")
# Until a command opens its log file, the log goes nowhere: without a handler Python's last-resort
# handler would print errors to stderr a second time, after the command's own one-line error.
logger.addHandler(logging.NullHandler())
logger.propagate = False

_log_path: Path | None = None


def open_log(path: Path) -> Path:
    """Send the full log of this run to `path` (0600: it may name hosts and files)."""
    global _log_path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    _log_path = path
    return path


def log_path() -> Path | None:
    return _log_path


def log_line_count() -> int:
    """How many lines the log holds now, so an error can point at the line where a step failed."""
    if _log_path is None or not _log_path.exists():
        return 0
    with _log_path.open("rb") as f:
        return sum(1 for _ in f)


def info(message: str) -> None:
    logger.info(message)
    console.print(message)


def detail(message: str) -> None:
    """Into the log only."""
    logger.info(message)


def warn(message: str) -> None:
    logger.warning("warning: %s", message)
    console.print(f"[yellow]warning:[/] {message}")


_phase: list[str] = []


def progress(text: str) -> None:
    """What the current step is doing right now (e.g. packer's last message), shown after its title."""
    _phase[:] = [text[:80]]


def _interactive() -> bool:
    return console.is_terminal and os.environ.get("CI") != "true"


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """A build phase: live phase + elapsed time while it runs, one line with the duration after."""
    start = time.monotonic()
    logger.info("==> %s", title)
    done = threading.Event()
    status = None
    _phase.clear()
    if _interactive():
        status = console.status(f"{title} …")
        status.start()

        def refresh() -> None:
            while not done.wait(1.0):
                detail = f" — {_phase[-1]}" if _phase else ""
                status.update(f"{title} … {time.monotonic() - start:.0f}s{detail}")

        threading.Thread(target=refresh, daemon=True).start()
    else:
        # CI and pipes: no spinner, but a line when the phase starts so a hung phase is visible.
        console.print(f"… {title}")
    try:
        yield
    except BaseException:
        logger.info("<== %s FAILED after %.1fs", title, time.monotonic() - start)
        raise
    finally:
        done.set()
        if status is not None:
            status.stop()
    elapsed = time.monotonic() - start
    logger.info("<== %s done in %.1fs", title, elapsed)
    console.print(f"[green]✓[/] {title} [dim]({elapsed:.0f}s)[/]")
