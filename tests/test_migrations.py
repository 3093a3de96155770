"""The Alembic migrations build exactly the schema that db/models.py declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from tests.conftest import _postgres, _sqlite, database_backends


@pytest.mark.parametrize("backend", database_backends())
def test_migrations_match_the_models(backend: str, tmp_path: Path) -> None:
    from db.migrate import upgrade
    from db.models import Base

    db = _sqlite(tmp_path) if backend == "sqlite" else _postgres()
    try:
        upgrade(db.url, timeout_s=10)
        engine = create_engine(db.url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        engine.dispose()
        assert diff == [], f"models and migrations differ (add a migration): {diff}"
    finally:
        db.cleanup()  # type: ignore[operator]
