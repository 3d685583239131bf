"""The host's one HTTP client (urllib3) for what Outband fetches: downloads, Debian's Release
files, the local ACME CA's and DNS's management APIs. Idempotent requests are retried with
back-off on connection errors and 429/5xx; a proxy from the environment is honoured.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import urllib3

from appliance.errors import die

RETRIES = urllib3.Retry(
    total=4,
    backoff_factor=1.0,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=frozenset({"GET", "HEAD"}),  # never a POST: it may have happened already
    respect_retry_after_header=True,
    raise_on_status=False,
)


def pool(ca_file: str | None = None) -> urllib3.PoolManager:
    kwargs: dict[str, Any] = {"retries": RETRIES, "timeout": urllib3.Timeout(connect=15, read=60)}
    if ca_file:
        kwargs["ca_certs"] = ca_file
    proxy = urllib.request.getproxies().get("https")
    return urllib3.ProxyManager(proxy, **kwargs) if proxy else urllib3.PoolManager(**kwargs)


def get(url: str, ca_file: str | None = None, limit: int | None = None) -> bytes:
    """The body of a GET (its first `limit` bytes), or a one-line error naming the URL."""
    try:
        response = pool(ca_file).request("GET", url, preload_content=False)
        try:
            if response.status != 200:
                die(f"GET {url} answered {response.status}", hint="is the address right and the server up?")
            return response.read(limit) if limit else response.read()
        finally:
            response.release_conn()
    except urllib3.exceptions.HTTPError as e:
        die(f"cannot reach {url}: {e}", hint="check the network (and a proxy, if this machine needs one)")


def download(url: str, dest: Path, ca_file: str | None = None) -> Path:
    """Stream a file to `dest` (written under a temporary name, renamed when complete)."""
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        response = pool(ca_file).request("GET", url, preload_content=False)
        if response.status != 200:
            die(f"GET {url} answered {response.status}", hint="is the URL in the pin still right?")
        with tmp.open("wb") as f:
            shutil.copyfileobj(response, f)
        response.release_conn()
    except urllib3.exceptions.HTTPError as e:
        tmp.unlink(missing_ok=True)
        die(f"cannot download {url}: {e}", hint="check the network")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def post_json(url: str, body: Any, ca_file: str | None = None) -> int:
    """One POST to a loopback management API (not retried); its status."""
    response = pool(ca_file).request(
        "POST", url, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, retries=False
    )
    return response.status
