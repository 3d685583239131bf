"""pydo, wrapped: one clear error type, manual pagination, back-off on 429.

pydo returns some errors as data (status codes listed in its spec, e.g. 404 → {"id": "not_found",
"message": …}) and raises azure's HttpResponseError for others; both become one OutbandError here,
naming the step. 429 and 5xx are retried with back-off, by the Azure pipeline and once more here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pydo
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from appliance import log
from appliance.errors import OutbandError

RETRY_STATUSES = {429, 500, 502, 503, 504}


class DoError(OutbandError):
    def __init__(self, step: str, status: int | None, ident: str, message: str):
        super().__init__(
            f"DigitalOcean API: {step} failed ({status or '-'} {ident}: {message})",
            hint="check the token's scopes, the account limits and the DigitalOcean status page",
        )
        self.step, self.status_code, self.ident = step, status, ident


def _as_error(result: Any) -> tuple[str, str] | None:
    """pydo's errors-as-data: {"id": "not_found", "message": "..."} (resources have int/uuid ids)."""
    if isinstance(result, dict) and isinstance(result.get("id"), str) and "message" in result and len(result) <= 4:
        return result["id"], result["message"]
    return None


class DoApi:
    def __init__(
        self,
        token: str,
        endpoint: str = "https://api.digitalocean.com",
        ca_bundle: str = "",
        attempts: int = 5,
        backoff: float = 1.0,
    ):
        kwargs: dict[str, Any] = {"endpoint": endpoint, "retry_total": 2, "retry_backoff_factor": backoff / 4}
        if ca_bundle:
            kwargs["connection_verify"] = ca_bundle
        self.client = pydo.Client(token=token, **kwargs)
        self.attempts = attempts
        self.backoff = backoff

    def call(self, step: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One API call; returns its dict (or None for a tolerated 404)."""
        for attempt in range(1, self.attempts + 1):
            try:
                result = fn(*args, **kwargs)
            except HttpResponseError as e:
                status = e.status_code
                body = _as_error(_json(e)) or ("http_error", str(e.reason or e.message).splitlines()[0])
                if status == 404 and missing_ok:
                    return None
                if status in RETRY_STATUSES and attempt < self.attempts:
                    self._wait(step, status, attempt)
                    continue
                raise DoError(step, status, *body) from None
            except ServiceRequestError as e:
                if attempt < self.attempts:
                    self._wait(step, None, attempt)
                    continue
                raise DoError(step, None, "unreachable", str(e).splitlines()[0]) from None
            error = _as_error(result)
            if error is not None:
                if error[0] == "not_found" and missing_ok:
                    return None
                raise DoError(step, None, *error)
            return result
        raise AssertionError("unreachable")

    def _wait(self, step: str, status: int | None, attempt: int) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        log.detail(f"DigitalOcean API: {step} got {status}; retrying in {delay:.1f}s")
        time.sleep(delay)

    def paginate(self, step: str, fn: Callable[..., Any], key: str, **kwargs: Any) -> list[dict]:
        """Every item of a listing: pydo leaves pagination to the caller (links.pages.next)."""
        items: list[dict] = []
        page = 1
        while True:
            result = self.call(f"{step} (page {page})", fn, page=page, per_page=200, **kwargs)
            items.extend(result.get(key, []))
            if not result.get("links", {}).get("pages", {}).get("next"):
                return items
            page += 1


def _json(e: HttpResponseError) -> Any:
    try:
        return e.response.json() if e.response is not None else None
    except Exception:  # a non-JSON error body
        return None
