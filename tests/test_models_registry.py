"""Registry and model cards: scanning folders, first directory wins, public view, TF-free."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from models.cards import render_markdown, severity_order
from models.preprocessing import InputSpec
from models.registry import ModelCard, Registry

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "models" / "store" / "lungct-cnn6"


def _card(name: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    card = {
        "name": name,
        "version": version,
        "architecture": "cnn6",
        "classes": ["benign", "malignant", "normal"],
        "input": {"height": 128, "width": 128, "channels": 1},
        "severity": ["normal", "benign", "malignant"],
        "file": "model.keras",
        "metrics": {"split": "grouped", "test": {"accuracy": 0.9, "macro_f1": 0.8}},
        "intended_use": "research use, not for clinical diagnosis",
    }
    return card | extra


def _write(root: Path, folder: str, card: dict[str, Any]) -> Path:
    (root / folder).mkdir(parents=True)
    (root / folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return root / folder


def test_cards_and_get(tmp_path: Path) -> None:
    _write(tmp_path, "m1", _card("alpha"))
    _write(tmp_path, "m2", _card("beta", "2.0.0"))
    reg = Registry([tmp_path, tmp_path / "missing"])
    assert [c.name for c in reg.cards()] == ["alpha", "beta"]
    beta = reg.get("beta")
    assert beta.version == "2.0.0"
    assert beta.input == InputSpec(128, 128, 1)
    assert beta.severity == ["normal", "benign", "malignant"]
    assert beta.model_file == tmp_path / "m2" / "model.keras"
    with pytest.raises(KeyError):
        reg.get("gamma")


def test_first_directory_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = _write(tmp_path / "store", "x", _card("same", "1.0.0"))
    _write(tmp_path / "var", "x", _card("same", "9.9.9"))
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        card = Registry([tmp_path / "store", tmp_path / "var"]).get("same")
    assert card.version == "1.0.0" and card.path == first
    assert "ignored" in caplog.text


def test_broken_card_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "card.json").write_text("{not json", encoding="utf-8")
    _write(tmp_path, "bad2", _card("wrong", severity=["normal"]))
    _write(tmp_path, "ok", _card("ok"))
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        assert Registry([tmp_path]).names() == ["ok"]
    assert "skipping" in caplog.text


def test_missing_severity_stays_empty(tmp_path: Path) -> None:
    data = _card("plain")
    del data["severity"]
    card = ModelCard.from_dict(data, tmp_path)
    assert card.severity == []


def test_to_public_has_no_paths(tmp_path: Path) -> None:
    public = ModelCard.from_dict(_card("alpha"), tmp_path).to_public()
    assert public["architecture"] == "cnn6"
    assert public["input"] == {"height": 128, "width": 128, "channels": 1}
    assert public["metrics"] == {"accuracy": 0.9, "macro_f1": 0.8, "split": "grouped"}
    assert str(tmp_path) not in json.dumps(public)


def test_severity_order_rules() -> None:
    assert severity_order(["benign", "malignant", "normal"]) == ["normal", "benign", "malignant"]
    kaggle = ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]
    assert severity_order(kaggle)[0] == "normal"
    assert severity_order(["a", "b"], "b,a") == ["b", "a"]
    with pytest.raises(ValueError):
        severity_order(["a", "b"], "a")


@pytest.mark.skipif(not (SHIPPED / "card.json").is_file(), reason="default model not trained yet")
def test_shipped_default_model_card() -> None:
    card = Registry([REPO_ROOT / "models" / "store"]).get("lungct-cnn6")
    assert card.version == "1.0.0" and card.architecture == "cnn6"
    assert card.classes == ["benign", "malignant", "normal"]
    assert card.severity == ["normal", "benign", "malignant"]
    assert card.model_file.is_file()
    assert card.model_file.stat().st_size < 25 * 1024**2
    assert "grouped" in card.metrics["split"]
    assert card.raw["intended_use"] == "research use, not for clinical diagnosis"
    assert "Alyasriy" in (SHIPPED / "card.md").read_text(encoding="utf-8")
    test_files = set(card.raw["split"]["files"]["test"])
    assert not test_files & set(card.raw["split"]["files"]["train"])
    assert render_markdown(card.raw).startswith("# Model card: lungct-cnn6")
