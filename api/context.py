"""What a request handler needs from its app: settings, a database session, storage.

``create_app(settings)`` puts the settings on the app; everything a request
touches is derived from them, so two apps with different settings (tests) do
not share a database or a queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app
from sqlalchemy.orm import Session

from config import Settings
from db.session import session_scope
from storage import Storage, open_storage


def settings() -> Settings:
    """The settings of the running app."""
    return current_app.config["SETTINGS"]


@contextmanager
def session() -> Iterator[Session]:
    """One transaction on the app's database."""
    with session_scope(settings().database_url) as s:
        yield s


def storage() -> Storage:
    """The app's upload storage (a local folder or an S3 bucket, by STORAGE_URL)."""
    return open_storage(settings())
