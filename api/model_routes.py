"""Models: what the workers can serve, with their model-card metrics."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import url_for

from api import context
from api.auth import auth
from api.schemas import ModelsOut
from models.registry import Registry

bp = APIBlueprint("models", __name__, url_prefix="/api/v1", tag="Models")


@bp.get("/models")
@bp.auth_required(auth)
@bp.output(ModelsOut)
@bp.doc(summary="List the installed models")
def list_models() -> dict[str, Any]:
    """Name, version, classes, input shape and test metrics of each installed model."""
    settings = context.settings()
    items = []
    for card in Registry(settings.models_dirs).cards():
        public = card.to_public()
        public["default"] = card.name == settings.default_model
        public["card_url"] = url_for("ui.model_card", name=card.name)
        items.append(public)
    return {"items": items, "default": settings.default_model}
