"""The web UI: one page that submits, polls and shows results through the v1 API."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import render_template

bp = APIBlueprint("ui", __name__, enable_openapi=False)


@bp.get("/")
def index() -> str:
    return render_template("index.html")
