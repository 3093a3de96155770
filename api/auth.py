"""API keys: who is asking. Every ``/api/v1`` route requires ``Authorization: Bearer <key>``.

A key is 32 random bytes (``lct_`` + URL-safe base64), shown once when it is
created; the database keeps only its SHA-256. A salt or a slow hash is not
needed for random 256-bit secrets (they cannot be guessed from a dictionary),
and a plain digest lets each request be checked with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apiflask import HTTPError, HTTPTokenAuth
from flask import request
from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from api import context
from api.errors import error_body
from db.models import ApiKey, as_utc, utcnow

KEY_PREFIX = "lct_"
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is written at most once a minute per key: no write per read request."""

auth = HTTPTokenAuth(scheme="Bearer", description="An API key: python -m api.keys create OWNER")


@dataclass(frozen=True)
class Caller:
    """The owner behind a valid key."""

    owner: str
    admin: bool
    key_id: int


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(s: Session, owner: str, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key for ``owner``: returns the row and the key (never stored)."""
    owner = owner.strip()
    if not owner or len(owner) > 128:
        raise ValueError("the owner must be 1 to 128 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(owner=owner, key_hash=hash_key(key), prefix=key[:12], admin=admin)
    s.add(row)
    s.flush()
    return row, key


def bearer_token() -> str | None:
    """The key in this request's ``Authorization: Bearer`` header, if any.

    For code that runs outside :data:`auth` (rate-limit keys, the open /readyz).
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


ACTIVE_KEY = select(ApiKey.id, ApiKey.owner, ApiKey.admin, ApiKey.last_used_at).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def find_key(s: Session, key: str) -> Row[int, str, bool, datetime | None] | None:
    """The active (not revoked) key's id, owner, admin flag and last use, if ``key`` is one.

    Every request asks, so this reads four columns through the session's
    connection: loading an ``ApiKey`` object through the ORM cost more than twice
    the CPU (docs/benchmarks.md).
    """
    return s.connection().execute(ACTIVE_KEY, {"key_hash": hash_key(key)}).first()


@auth.verify_token
def _verify(token: str) -> Caller | None:
    """Look the key up; remember roughly when it was last used."""
    if not token:
        return None
    with context.session() as s:
        row = find_key(s, token)
        if row is None:
            return None
        key_id, owner, admin, last = row
        now = utcnow()
        if last is None or as_utc(last) < now - LAST_USED_RESOLUTION:
            stamp = update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now)
            s.connection().execute(stamp)
        return Caller(owner=owner, admin=admin, key_id=key_id)


@auth.error_processor
def _unauthorized(error: HTTPError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """401 with a message that says what to send (the app's JSON error shape)."""
    message = "missing or invalid API key: send 'Authorization: Bearer <key>'"
    headers = {"WWW-Authenticate": 'Bearer realm="lungct"'}
    return error_body(401, message), 401, headers


def caller() -> Caller:
    """The authenticated caller of the current request.

    Only views behind ``auth.login_required`` may ask: elsewhere there is no caller,
    and saying so here beats an ``AttributeError`` on ``None`` further on.
    """
    user = auth.current_user
    if not isinstance(user, Caller):
        raise RuntimeError("caller() outside a view that requires an API key")
    return user
