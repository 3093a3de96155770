"""Offset pagination, written once: read a page plus one row, and link the next page.

Every listing (jobs, a job's results, the audit log) reads ``limit + 1`` rows:
the extra row says whether a next page exists without a second COUNT query,
and ``next`` repeats the listing's filters (never ``wait``: a next page is
read at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from flask import request, url_for
from sqlalchemy import Select
from sqlalchemy.orm import Session

from api import context

T = TypeVar("T")


def bounds(query: dict[str, Any]) -> tuple[int, int]:
    """(offset, limit) of a page query; ``limit`` defaults to RESULTS_PAGE_SIZE."""
    return query["offset"], query["limit"] or context.settings().results_page_size


def page(
    s: Session,
    stmt: Select[T],
    query: dict[str, Any],
    endpoint: str,
    filters: Sequence[str] = (),
    **view_args: Any,
) -> tuple[list[T], str | None]:
    """The rows of this page of ``stmt`` (already ordered) and the next page's URL, if any.

    ``filters``: the query parameters the next link repeats (as sent, repeated
    ones included); ``view_args``: the endpoint's path arguments.
    """
    offset, limit = bounds(query)
    rows = list(s.scalars(stmt.offset(offset).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    args: dict[str, Any] = {k: request.args.getlist(k) for k in filters if k in request.args}
    return rows[:limit], url_for(endpoint, offset=offset + limit, limit=limit, **args, **view_args)
