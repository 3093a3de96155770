"""Engine and session factory, created lazily once per process.

Lazily, because gunicorn and Celery fork: an engine created before the fork
would share pooled connections between processes. Celery workers also call
:func:`dispose_after_fork` in each child (SQLAlchemy pooling docs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """WAL lets the API read while a worker writes; busy timeout avoids 'database is locked'.

    ``synchronous=NORMAL`` is the setting SQLite recommends with WAL: no corruption
    on power loss, at most the last commits lost, and no fsync per batch commit.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def build_engine(url: str) -> Engine:
    """Create an engine for ``url`` with the per-dialect settings we rely on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for ``DATABASE_URL``."""
    return build_engine(get_settings().database_url)


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    """The process-wide session factory (one session per request or task)."""
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session in one transaction: commit on success, roll back on error."""
    with get_sessionmaker()() as session, session.begin():
        yield session


def dispose_after_fork() -> None:
    """Drop pooled connections inherited from the parent without closing them."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
