"""Manage API keys: ``python -m api.keys create OWNER [--admin] | ensure OWNER | list | revoke``.

``create`` prints the new key alone on the last line of its output (exit 0);
it is shown only this once. ``ensure`` creates a key only if OWNER has no
active key yet (what ``make run`` does on its first start), else says so.
``list`` shows owner, prefix, created, last used and whether the key is
revoked, never the key. ``revoke`` takes the key's prefix (as ``list`` shows
it) or the whole key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy import func, select

from api.auth import create_key, hash_key
from config import get_settings
from db.models import ApiKey, utcnow
from db.session import session_scope


def _create(url: str, owner: str, admin: bool) -> int:
    with session_scope(url) as s:
        row, key = create_key(s, owner, admin=admin)
        kind = "admin key" if admin else "key"
        print(f"created {kind} {row.prefix}... for owner {row.owner!r}; it is shown only once:")
    print(key)
    return 0


def _ensure(url: str, owner: str) -> int:
    with session_scope(url) as s:
        active = s.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.owner == owner, ApiKey.revoked_at.is_(None))
        )
    if active:
        print(f"owner {owner!r} already has {active} active key(s); none created")
        return 0
    return _create(url, owner, admin=False)


def _list(url: str) -> int:
    with session_scope(url) as s:
        rows = s.scalars(select(ApiKey).order_by(ApiKey.owner, ApiKey.created_at)).all()
        print(f"{'owner':<24} {'prefix':<14} {'admin':<6} {'created':<26} {'last used':<26} state")
        for r in rows:
            state = "revoked" if r.revoked_at else "active"
            last = r.last_used_at.isoformat() if r.last_used_at else "never"
            print(
                f"{r.owner:<24} {r.prefix:<14} {('yes' if r.admin else 'no'):<6} "
                f"{r.created_at.isoformat():<26} {last:<26} {state}"
            )
    return 0


def _revoke(url: str, ident: str) -> int:
    with session_scope(url) as s:
        rows = s.scalars(
            select(ApiKey).where(
                (ApiKey.prefix == ident) | (ApiKey.key_hash == hash_key(ident)),
                ApiKey.revoked_at.is_(None),
            )
        ).all()
        if len(rows) != 1:
            print(f"no single active key matches {ident!r} ({len(rows)} found)", file=sys.stderr)
            return 1
        rows[0].revoked_at = utcnow()
        print(f"revoked {rows[0].prefix}... of owner {rows[0].owner!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key for OWNER and print it once")
    create.add_argument("owner")
    create.add_argument("--admin", action="store_true", help="may see every owner's jobs")
    ensure = sub.add_parser("ensure", help="create a key for OWNER unless it has one")
    ensure.add_argument("owner")
    sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    args = parser.parse_args(argv)
    url = get_settings().database_url
    if args.command == "create":
        return _create(url, args.owner, args.admin)
    if args.command == "ensure":
        return _ensure(url, args.owner)
    if args.command == "list":
        return _list(url)
    return _revoke(url, args.prefix)


if __name__ == "__main__":
    sys.exit(main())
