"""The rate limiter's Redis storage: one round trip counts a request and reads its window.

Flask-Limiter counts a request with one Lua call (``INCRBY``, and ``EXPIRE`` on the
window's first hit), and the ``X-RateLimit-*`` headers every limited answer carries
(api/app.py ``_limit_headers``) then needed a second round trip for the counter and
its TTL: about 4 % of the API's CPU in a burst of single images. Here the same Lua
call also answers the TTL, and the count and TTL are kept for the request in
``flask.g``, where the headers read them.

The class registers the URI schemes ``lungct+redis`` and ``lungct+rediss`` with the
``limits`` package (its storages register by ``STORAGE_SCHEME``), and is otherwise
``limits``' own Redis storage on the plain ``redis://`` URI.
"""

from __future__ import annotations

from typing import Any

from flask import g, has_request_context
from limits.storage import RedisStorage

SCHEME_PREFIX = "lungct+"
WINDOWS = "lungct_limit_windows"
"""``flask.g`` attribute: prefixed key -> (count, seconds left) of each limit counted."""

INCR_TTL = b"""
local current = redis.call("incrby", KEYS[1], tonumber(ARGV[2]))
if current == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""


def storage_uri(redis_url: str) -> str:
    """The limiter's storage URI for ``REDIS_URL``: this storage for redis:// and
    rediss://, ``limits``' own for anything else (a Unix socket, say)."""
    if redis_url.startswith(("redis://", "rediss://")):
        return SCHEME_PREFIX + redis_url
    return redis_url


class CountingRedisStorage(RedisStorage):
    """``limits``' Redis storage whose increment also reads the window's TTL."""

    STORAGE_SCHEME = ["lungct+redis", "lungct+rediss"]  # noqa: RUF012 (as limits declares it)

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri.removeprefix(SCHEME_PREFIX), **options)

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_incr_ttl = self.get_connection().register_script(INCR_TTL)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count ``amount`` against ``key``; keep the count and TTL for this request."""
        full = self.prefixed_key(key)
        count, ttl = self.lua_incr_ttl([full], [expiry, amount])
        if has_request_context():
            g.setdefault(WINDOWS, {})[full] = (int(count), int(ttl))
        return int(count)


def counted(key: str) -> tuple[int, int] | None:
    """(count, seconds left) of the prefixed ``key`` as this request counted it, if it did."""
    windows: dict[str, tuple[int, int]] = g.get(WINDOWS, {})
    return windows.get(key)
