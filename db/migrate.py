"""Wait for the database, then apply Alembic migrations (``python -m db.migrate``).

The start-up step of every deployment (``make run``, the compose ``migrate``
service): it retries while PostgreSQL is still starting, so services started
together do not race the database.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from config import get_settings
from db.session import build_engine

log = logging.getLogger("db.migrate")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """Alembic configuration built in code, so no ini file path has to be right."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def wait_for_database(url: str, timeout_s: float = 60.0) -> None:
    """Block until a connection succeeds, or raise after ``timeout_s``."""
    engine = build_engine(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"database not reachable after {timeout_s:.0f}s") from exc
                log.info("waiting for the database: %s", exc.orig)
                time.sleep(1.0)
    finally:
        engine.dispose()


def upgrade(url: str, timeout_s: float = 60.0) -> None:
    """Migrate ``url`` to the latest revision."""
    wait_for_database(url, timeout_s)
    command.upgrade(alembic_config(url), "head")


def main() -> None:
    """CLI entry point: migrates the settings' ``DATABASE_URL``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the DB")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    upgrade(get_settings().database_url, timeout_s=args.timeout)
    log.info("database is at the latest revision")


if __name__ == "__main__":
    main()
