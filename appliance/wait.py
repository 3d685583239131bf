"""One way to wait: a deadline, an interval (optionally growing), and an error naming what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from appliance.errors import die

T = TypeVar("T")


@dataclass(frozen=True)
class Clock:
    """What waiting reads and does; tests pass a fake one so no test sleeps for real."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


REAL = Clock()


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 1.0,
    backoff: float = 1.0,
    max_interval: float = 30.0,
    hint: str | None = None,
    clock: Clock = REAL,
) -> T:
    """Call `check` until it returns something truthy and return that; die after `timeout` seconds.

    `backoff` > 1 multiplies the interval after each try (up to `max_interval`): for remote APIs
    and DNS, where asking often only adds load.
    """
    deadline = clock.now() + timeout
    delay = interval
    while True:
        result = check()
        if result:
            return result
        if clock.now() >= deadline:
            die(f"gave up after {timeout:.0f}s waiting for {what}", hint=hint)
        clock.sleep(min(delay, max(0.0, deadline - clock.now())) or delay)
        delay = min(delay * backoff, max_interval)
