"""The web UI: a small app shell whose script modules (api/static/) use the v1 API.

The page holds no data itself: the browser sends the API key with every
request, so the shell is the same for every URL the app knows (``/`` and a
shareable ``/jobs/<id>``, which the script reads from ``location``).
"""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import render_template

bp = APIBlueprint("ui", __name__, enable_openapi=False)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """One job's page; the script reads the ID from the URL and fetches the job with the key."""
    return render_template("index.html")
