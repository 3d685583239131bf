"""What every task shares: settings from the invoke context, a log file, errors → exit statuses."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from invoke import Context, Exit
from invoke.parser.parser import ParseMachine

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


_original_handle = ParseMachine.handle
_original_complete_context = ParseMachine.complete_context


def _strict_handle(self: ParseMachine, token: str) -> None:
    context = self.context
    if (
        self.current_state != "unknown"
        and not self.waiting_for_flag_value
        and context is not None
        and context.missing_positional_args
        and token.startswith("-")
        and token not in context.flags
        and token not in context.inverse_flags
    ):
        # A Lexicon: aliases (-h for --help) resolve through [] and `in`, not through .get().
        flag = self.initial.flags[token] if self.initial and token in self.initial.flags else None
        if flag is not None and flag.name == "help":
            flag.value = context.name
            self.outband_help_for = context.name
            return
        names = ", ".join(a.name for a in context.missing_positional_args)
        self.error(
            f"{context.name}: {token!r} is not one of its options, and {names} may not start with '-' "
            f"(see `invoke {context.name} --help`)"
        )
    _original_handle(self, token)


def _strict_complete_context(self: ParseMachine) -> None:
    if self.context is not None and getattr(self, "outband_help_for", None) == self.context.name:
        # Only the help is shown: the task's missing values do not matter.
        if self.context not in self.result:
            self.result.append(self.context)
        return
    _original_complete_context(self)


def strict_positionals() -> None:
    """A task's positional argument never takes a token that starts with '-'.

    invoke 3.0.3 gives a task's missing positional argument whatever token comes next, so
    `invoke user.add --help` *ran* the task with user="--help": it made the account @--help
    (pyinvoke/invoke#982, open; the fixes proposed upstream, #1078/#1085, are not released). With
    this, `--help`/`-h` after a task name shows that task's help, and any other dash-token where a
    value is expected is a parse error. invoke's parse machine is a fluidity state machine, which
    cannot be subclassed (its states live in the class body), so its two methods are wrapped here;
    tasks.py calls this when invoke loads it, before the task part of the command line is parsed.
    """
    ParseMachine.handle = _strict_handle  # type: ignore[method-assign]
    ParseMachine.complete_context = _strict_complete_context  # type: ignore[method-assign]


def quiet_broken_pipes() -> None:
    """`invoke audit | head` ends like any Unix tool when the reader goes away (exit 141, no
    traceback). Not by restoring SIGPIPE's default: that would also kill the process when a socket's
    peer goes away (a probe of a booting appliance), where Python's BrokenPipeError is wanted."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, BrokenPipeError):
            # stdout's reader is gone: nothing more can be said there, and nothing at exit either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os._exit(128 + signal.SIGPIPE)
        previous(kind, value, tb)

    sys.excepthook = hook
