"""The web UI: a small app shell whose script modules (api/static/) use the v1 API.

The page holds no data itself: the browser sends the API key with every
request, so the shell is the same for every URL the app knows (``/`` and a
shareable ``/jobs/<id>`` and ``/jobs/<id>/series/<n>/slices/<i>``, which the
script reads from ``location``).
"""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import Response, render_template

from api import context
from models.registry import Registry

bp = APIBlueprint("ui", __name__, enable_openapi=False)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """One job's page; the script reads the ID from the URL and fetches the job with the key."""
    return render_template("index.html")


@bp.get("/jobs/<job_id>/series/<int:series>/slices/<int:slice_number>")
def slice_page(job_id: str, series: int, slice_number: int) -> str:
    """A shareable slice viewer link: series and slice numbered from 1, in the job's order."""
    return render_template("index.html")


@bp.get("/models/<name>/card")
def model_card(name: str) -> Response:
    """A model's card (card.md) as text: documentation, open like the UI itself.

    A link in the page cannot send the API key, and a model card holds no
    patient data: what the model was trained on, its metrics, its limits.
    """
    try:
        card = Registry(context.settings().models_dirs).get(name)
    except KeyError:
        abort(404, f"no model {name!r}")
    path = card.path / "card.md"
    if not path.is_file():
        abort(404, f"model {name!r} has no card.md")
    return Response(path.read_text(encoding="utf-8"), mimetype="text/plain")
