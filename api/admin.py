"""Operator routes (admin API keys only): the audit log of submits, cancels and deletes."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, abort
from sqlalchemy import select

from api import context, pages
from api.auth import auth, caller
from api.schemas import AuditOut, ResultsQuery
from api.serializers import iso
from db.models import AuditEvent

bp = APIBlueprint("admin", __name__, url_prefix="/api/v1/admin", tag="Admin")


@bp.get("/audit")
@bp.auth_required(auth)
@bp.input(ResultsQuery, location="query", arg_name="query")
@bp.output(AuditOut)
@bp.doc(summary="Audit log, newest first (admin keys only)", responses=[200, 401, 403])
def audit_log(query: dict[str, Any]) -> dict[str, Any]:
    """Who submitted, cancelled or deleted which job, and when; no patient data."""
    if not caller().admin:
        abort(403, "the audit log needs an admin API key (python -m api.keys create NAME --admin)")
    with context.session() as s:
        ordered = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        rows, nxt = pages.page(s, ordered, query, "admin.audit_log")
        items = [
            {"at": iso(e.at), "owner": e.owner, "action": e.action, "job_id": e.job_id}
            for e in rows
        ]
    return {"items": items, "next": nxt}
