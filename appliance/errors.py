"""One user-facing error type, explicit exit statuses (httpie style), and `die()` (mkosi style)."""

from __future__ import annotations

from enum import IntEnum
from typing import NoReturn


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # a step failed (build, boot, check)
    USAGE = 2  # bad input: fix the command line or invoke.yaml
    MISSING_TOOL = 3  # a host tool is not installed
    VERIFY_FAILED = 4  # the appliance runs but a check failed
    DIFFERENT = 5  # two images differ (`images --diff`, `bake --check`), like diff(1)'s 1 but distinct from an error
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    TERMINATED = 143  # SIGTERM (128 + SIGTERM): a cancelled CI job, `kill`


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that everything that cleans up after an
    interruption (a launch removes what it made) does so for a cancelled job too. Python's default
    for SIGTERM is to end at once, leaving a launch's VM running."""


class OutbandError(Exception):
    """An error meant for the operator: one line, plus a hint on what to do about it."""

    def __init__(self, message: str, hint: str | None = None, status: ExitStatus = ExitStatus.ERROR):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


def die(message: str, hint: str | None = None, status: ExitStatus = ExitStatus.ERROR) -> NoReturn:
    raise OutbandError(message, hint=hint, status=status)
