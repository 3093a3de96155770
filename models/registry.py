"""Model cards and the registry of trained models on disk (TF-free: numpy/json only).

The API lists and validates models through this module, so it must never import
TensorFlow or Keras. A model is a folder ``<dir>/<name>/`` holding ``card.json``
(schema in docs/architecture.md) and the weights file it names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.preprocessing import InputSpec

logger = logging.getLogger(__name__)

CARD_FILE = "card.json"
_warned: set[str] = set()
_parsed: dict[Path, tuple[tuple[int, int], ModelCard]] = {}
"""card path -> ((mtime_ns, size), card): a rescan re-reads only cards that changed."""


def _warn_once(message: str, *args: object) -> None:
    """Log a registry problem once per process: folders are rescanned on every request."""
    text = message % args
    if text not in _warned:
        _warned.add(text)
        logger.warning(text)


DEFAULT_MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class ModelCard:
    """What the service needs to know about one trained model, read from its card.json."""

    name: str
    version: str
    classes: list[str]
    input: InputSpec
    severity: list[str]
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        """The weights file next to the card (``file`` in card.json, default model.keras)."""
        return self.path / str(self.raw.get("file", DEFAULT_MODEL_FILE))

    @property
    def architecture(self) -> str:
        """The builder name the model was trained with (``cnn6``, ``resnet50``...)."""
        return str(self.raw.get("architecture", "unknown"))

    def to_public(self) -> dict[str, Any]:
        """The API view: identity, classes, input shape and a metrics summary, no paths."""
        test = self.metrics.get("test", {}) if isinstance(self.metrics, dict) else {}
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "classes": list(self.classes),
            "severity": list(self.severity),
            "input": self.input.to_dict(),
            "metrics": {
                "accuracy": test.get("accuracy"),
                "macro_f1": test.get("macro_f1"),
                "split": self.metrics.get("split"),
            },
            "intended_use": self.raw.get("intended_use"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> ModelCard:
        """Build a card from parsed card.json.

        A missing severity stays empty (not the class order): class names alone say
        nothing about which is worse, and the study summary then uses the majority label.
        """
        classes = [str(c) for c in data["classes"]]
        severity = [str(c) for c in data.get("severity") or []]
        if severity and sorted(severity) != sorted(classes):
            raise ValueError(f"severity {severity} must be a permutation of classes {classes}")
        return cls(
            name=str(data["name"]),
            version=str(data.get("version", "0.0.0")),
            classes=classes,
            input=InputSpec.from_dict(data["input"]),
            severity=severity,
            path=Path(path),
            metrics=dict(data.get("metrics") or {}),
            raw=dict(data),
        )

    @classmethod
    def load(cls, model_dir: Path) -> ModelCard:
        """Read ``<model_dir>/card.json``."""
        with open(Path(model_dir) / CARD_FILE, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh), Path(model_dir))


class Registry:
    """Models found under several directories; the first directory wins on a name clash.

    Directories are scanned on every call, so a model trained into ``var/models``
    while the service runs becomes visible without a restart.
    """

    def __init__(self, dirs: Sequence[Path | str]) -> None:
        self.dirs = [Path(d) for d in dirs]

    def _scan(self) -> dict[str, ModelCard]:
        found: dict[str, ModelCard] = {}
        for root in self.dirs:
            if not root.is_dir():
                continue
            for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
                card = self._read(card_path)
                if card is None:
                    continue
                if card.name in found:
                    _warn_once(
                        "model %r in %s ignored: already provided by %s",
                        card.name,
                        card.path,
                        found[card.name].path,
                    )
                    continue
                found[card.name] = card
        return found

    @staticmethod
    def _read(card_path: Path) -> ModelCard | None:
        """Read one card; a broken card is logged and skipped so it cannot hide the others.

        Parsed cards are kept per process and re-read when the file's size or
        modification time changes: the API resolves a model on every submit,
        and parsing every card each time cost more than the rest of the lookup.
        """
        try:
            stat = card_path.stat()
            version = (stat.st_mtime_ns, stat.st_size)
            cached = _parsed.get(card_path)
            if cached is not None and cached[0] == version:
                return cached[1]
            card = ModelCard.load(card_path.parent)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _warn_once("skipping unreadable model card %s: %s", card_path, exc)
            return None
        _parsed[card_path] = (version, card)
        return card

    def cards(self) -> list[ModelCard]:
        """All valid models, sorted by name."""
        return sorted(self._scan().values(), key=lambda c: c.name)

    def get(self, name: str) -> ModelCard:
        """The card of model ``name``; raises KeyError when no directory provides it."""
        found = self._scan()
        if name not in found:
            raise KeyError(name)
        return found[name]

    def names(self) -> list[str]:
        """Names of all valid models, sorted."""
        return [c.name for c in self.cards()]
