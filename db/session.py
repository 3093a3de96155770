"""Engine and session factory, created lazily once per process and database URL.

Lazily, because gunicorn and Celery fork: an engine created before the fork
would share pooled connections between processes. Celery workers also call
:func:`dispose_after_fork` in each child (SQLAlchemy pooling docs).

Every function takes the database URL from its caller (the settings its entry
point built), never from the environment: one process may use several
databases (tests do), and nothing here has to be reset when the URL changes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, func, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)
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


_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``, one per URL."""
    with _lock:
        if url not in _engines:
            _engines[url] = build_engine(url)
            _makers[url] = sessionmaker(bind=_engines[url], expire_on_commit=False)
        return _engines[url]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session on ``url`` in one transaction: commit on success, roll back on error."""
    get_engine(url)
    with _makers[url]() as session, session.begin():
        yield session


def transaction_lock(s: Session, name: str) -> None:
    """Hold a lock named ``name`` until ``s``'s transaction ends (commit or rollback).

    For a read-then-write that must not interleave with another one of the
    same name, across processes and hosts (the per-owner active-job cap):
    PostgreSQL takes a transaction-level advisory lock on a 64-bit hash of the
    name; SQLite has one writer anyway, so the transaction takes the write
    lock up front (``BEGIN IMMEDIATE``; this must be the transaction's first
    statement). A waiter blocks inside the database, no polling.
    """
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        s.execute(select(func.pg_advisory_xact_lock(key)))
    elif dialect == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")
    else:  # a database this service does not support: count without the lock
        log.warning("no transaction lock on %s; the active-job cap may overshoot", dialect)


def insert_new(s: Session, objects: Sequence[DeclarativeBase]) -> None:
    """INSERT new ORM objects in ``s``'s transaction now: one Core statement per table
    (an executemany for several rows), not the ORM's unit of work. (Not the worker's
    ``insert_rows``: that one takes slice rows as dicts and skips those already stored.)

    A flush of the same objects costs several times the CPU: on the submit path,
    recording a job and its audit row took about 1.3 ms with ``s.add`` and 0.6 ms
    this way (docs/benchmarks.md). Each object is first given its columns'
    Python-side defaults, so it holds exactly the row it inserted, as after a
    flush; it stays outside the session (transient: nothing lazy loads). A column
    left unset without such a default is left to the database (NULL, a server
    default, an autoincremented key), and the object does not learn its value.
    """
    statements: dict[tuple[Table, frozenset[str]], list[dict[str, Any]]] = {}
    for obj in objects:
        state = inspect(obj)
        values: dict[str, Any] = {}
        for prop in state.mapper.column_attrs:
            column = prop.columns[0]
            if prop.key not in state.dict:
                default = column.default
                if default is None or not (default.is_scalar or default.is_callable):
                    continue
                # a callable default is wrapped by SQLAlchemy to take an (unused) context
                setattr(obj, prop.key, default.arg(None) if default.is_callable else default.arg)
            values[column.key] = state.dict[prop.key]
        table = state.mapper.local_table
        assert isinstance(table, Table)  # declarative models map one table each
        statements.setdefault((table, frozenset(values)), []).append(values)
    connection = s.connection()
    for (table, _), params in statements.items():
        connection.execute(insert(table), params)


def dispose_after_fork() -> None:
    """Drop pooled connections inherited from the parent without closing them."""
    for engine in list(_engines.values()):
        engine.dispose(close=False)


def dispose(url: str) -> None:
    """Close and forget ``url``'s engine, if this process made one.

    For a database that is going away (a test's PostgreSQL schema is dropped
    afterwards, which waits for open connections); a later call makes a new one.
    """
    with _lock:
        engine = _engines.pop(url, None)
        _makers.pop(url, None)
    if engine is not None:
        engine.dispose()
