"""pydo, wrapped: one clear error type, manual pagination, and the only retry layer.

pydo returns some errors as data (status codes listed in its spec, e.g. 404 → {"id": "not_found",
"message": …}) and raises azure's HttpResponseError for others; both become one DoError here,
naming the step. azure-core's own retries are switched off (it retried POST on 500/503/504: a
droplet the server made before failing would have been made again, untracked and billed). Here:

- a read or a delete (idempotent) is retried on 429, 5xx and connection errors, with back-off;
- a create (POST) is never retried here: the caller looks the resource up first (it may exist);
- a 429 of the hourly limit carries `ratelimit-reset` (epoch seconds) and no Retry-After: the
  call waits until then, up to RATE_LIMIT_MAX_WAIT, instead of giving up in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pydo
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from appliance import log
from appliance.errors import OutbandError
from appliance.wait import REAL, Clock

RETRY_STATUSES = {429, 500, 502, 503, 504}
RATE_LIMIT_MAX_WAIT = 15 * 60


class DoError(OutbandError):
    def __init__(self, step: str, status: int | None, ident: str, message: str):
        super().__init__(
            f"DigitalOcean API: {step} failed ({status or '-'} {ident}: {message})",
            hint="check the token's scopes, the account limits and the DigitalOcean status page",
        )
        self.step, self.status_code, self.ident = step, status, ident

    @property
    def uncertain(self) -> bool:
        """The request may have taken effect (a server error, or no answer at all)."""
        return self.status_code is None or self.status_code >= 500


def _as_error(result: Any) -> tuple[str, str] | None:
    """pydo's errors-as-data: {"id": "not_found", "message": "..."} (resources have int/uuid ids)."""
    if isinstance(result, dict) and isinstance(result.get("id"), str) and "message" in result and len(result) <= 4:
        return result["id"], result["message"]
    return None


def retry_delay(status: int | None, headers: dict[str, str], attempt: int, backoff: float, now: float) -> float:
    """How long to wait before the next try: the server's word first (Retry-After for bursts,
    ratelimit-reset for the hourly limit), else exponential back-off."""
    lower = {k.lower(): v for k, v in headers.items()}
    if status == 429:
        if "retry-after" in lower and lower["retry-after"].strip().isdigit():
            return float(lower["retry-after"])
        if lower.get("ratelimit-reset", "").strip().isdigit():
            return max(0.0, float(lower["ratelimit-reset"]) - now) + 1.0
    return backoff * 2 ** (attempt - 1)


class DoApi:
    def __init__(
        self,
        token: str,
        endpoint: str = "https://api.digitalocean.com",
        ca_bundle: str = "",
        attempts: int = 5,
        backoff: float = 1.0,
        clock: Clock = REAL,
        wall: Callable[[], float] = time.time,
    ):
        kwargs: dict[str, Any] = {"endpoint": endpoint, "retry_total": 0}
        if ca_bundle:
            kwargs["connection_verify"] = ca_bundle
        self.client = pydo.Client(token=token, **kwargs)
        self.attempts = attempts
        self.backoff = backoff
        self.clock = clock
        self.wall = wall

    def call(
        self,
        step: str,
        fn: Callable[..., Any],
        *args: Any,
        missing_ok: bool = False,
        create: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One API call; returns its dict (or None for a tolerated 404). `create`: a POST that
        makes something, never repeated here (DoError.uncertain tells the caller to look it up)."""
        waited = 0.0
        for attempt in range(1, self.attempts + 1):
            try:
                result = fn(*args, **kwargs)
            except HttpResponseError as e:
                status = e.status_code
                body = _as_error(_json(e)) or ("http_error", str(e.reason or e.message).splitlines()[0])
                if status == 404 and missing_ok:
                    return None
                headers = dict(e.response.headers) if e.response is not None else {}
                delay = retry_delay(status, headers, attempt, self.backoff, self.wall())
                retryable = status in RETRY_STATUSES and (not create or status == 429)
                if retryable and attempt < self.attempts and waited + delay <= RATE_LIMIT_MAX_WAIT:
                    log.detail(f"DigitalOcean API: {step} got {status}; retrying in {delay:.1f}s")
                    self.clock.sleep(delay)
                    waited += delay
                    continue
                raise DoError(step, status, *body) from None
            except ServiceRequestError as e:
                if not create and attempt < self.attempts:
                    delay = self.backoff * 2 ** (attempt - 1)
                    log.detail(f"DigitalOcean API: {step} unreachable; retrying in {delay:.1f}s")
                    self.clock.sleep(delay)
                    continue
                raise DoError(step, None, "unreachable", str(e).splitlines()[0]) from None
            error = _as_error(result)
            if error is not None:
                if error[0] == "not_found" and missing_ok:
                    return None
                raise DoError(step, None, *error)
            return result
        raise AssertionError("unreachable")

    def paginate(self, step: str, fn: Callable[..., Any], key: str, **kwargs: Any) -> list[dict]:
        """Every item of a listing: pydo leaves pagination to the caller (links.pages.next)."""
        items: list[dict] = []
        page = 1
        while True:
            result = self.call(f"{step} (page {page})", fn, page=page, per_page=200, **kwargs)
            items.extend(result.get(key) or [])
            if not (result.get("links") or {}).get("pages", {}).get("next"):
                return items
            page += 1


def _json(e: HttpResponseError) -> Any:
    try:
        return e.response.json() if e.response is not None else None
    except Exception:  # a non-JSON error body
        return None
