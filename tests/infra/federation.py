"""Federation as seen from an appliance outwards: whether it reaches another server.

Synapse's notary API (/_matrix/key/v2/query) answers a query for "all of a server's keys" from its
cache only; a query for one key ID it does not hold makes it fetch the server's keys from the
server itself: an outgoing federation request (the server's name and .well-known, TLS to its
certificate, the keys' signature), refused if its federation_domain_whitelist leaves the server out.
"""

from __future__ import annotations

import secrets

from appliance import https


def _query(facts: dict, criteria: dict) -> list[dict]:
    r = https.request(
        facts["address"],
        8448,
        f"matrix.{facts['domain']}",
        "/_matrix/key/v2/query",
        facts["acme_root"],
        method="POST",
        body={"server_keys": criteria},
        timeout=120,
    )
    assert r.status == 200, (r.status, r.body[:200])
    return r.json()["server_keys"]


def keys_fetched_by(facts: dict, server: str) -> list[dict]:
    """`server`'s signing keys as the appliance of `facts` fetches them from `server` now; [] if it
    cannot or may not reach it."""
    unknown = f"ed25519:never-{secrets.token_hex(4)}"  # an ID no server has: a cache miss, so a fetch
    _query(facts, {server: {unknown: {"minimum_valid_until_ts": 0}}})
    return [k for k in _query(facts, {server: {}}) if k.get("server_name") == server]
