"""The web UI: a small app shell whose script modules (api/static/) use the v1 API.

The page holds no data itself: the browser sends the API key with every
request, so the shell is the same for every URL the app knows (``/`` and a
shareable ``/jobs/<id>`` and ``/jobs/<id>/series/<n>/slices/<i>``, which the
script reads from ``location``).
"""

from __future__ import annotations

from pathlib import Path

from apiflask import APIBlueprint, abort
from flask import Response, render_template, request, url_for
from markupsafe import Markup

from api import context
from api.cards import card_html, plot_path
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
def model_card(name: str) -> Response | str:
    """A model's card (card.md) as a page with its plots: documentation, open like the UI.

    A link in the page cannot send the API key, and a model card holds no
    patient data: what the model was trained on, its metrics, its limits.
    ``?format=text`` (or an Accept header preferring text/plain) gives the Markdown.
    """
    card_dir = _card_dir(name)
    text = (card_dir / "card.md").read_text(encoding="utf-8")
    wants_text = request.args.get("format") == "text" or (
        request.accept_mimetypes.best_match(["text/html", "text/plain"]) == "text/plain"
    )
    if wants_text:
        return Response(text, mimetype="text/plain")
    plot_url = url_for("ui.model_card", name=name) + "/"
    return render_template("card.html", name=name, body=Markup(card_html(text, card_dir, plot_url)))


@bp.get("/models/<name>/card/<plot>")
def model_card_plot(name: str, plot: str) -> Response:
    """A plot of a model card (a PNG in the card's folder, nothing else)."""
    path = plot_path(_card_dir(name), plot)
    if path is None:
        abort(404, f"model {name!r} has no plot {plot!r}")
    response = Response(path.read_bytes(), mimetype="image/png")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _card_dir(name: str) -> Path:
    try:
        card = Registry(context.settings().models_dirs).get(name)
    except KeyError:
        abort(404, f"no model {name!r}")
    if not (card.path / "card.md").is_file():
        abort(404, f"model {name!r} has no card.md")
    return Path(card.path)
