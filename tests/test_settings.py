"""The one settings object: environment names equal field names, and .env.example lists them all."""

from __future__ import annotations

import re

import pytest

from config import Settings
from tests.conftest import ROOT


def test_every_setting_is_documented_in_env_example() -> None:
    listed = set(re.findall(r"^#?([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = {name.upper() for name in Settings.model_fields} - listed
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_environment_names_are_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_BATCH_SIZE", "16")
    monkeypatch.setenv("SKIP_IMAGE_TYPES", "localizer, scout")
    monkeypatch.setenv("MODELS_DIRS", "models/store:/opt/models")
    monkeypatch.setenv("STALE_AFTER_S", "")  # empty means "the default"
    s = Settings()
    assert s.inference_batch_size == 16 and s.stale_after_s == 30.0
    assert s.skip_image_types == ("LOCALIZER", "SCOUT")
    assert [str(p) for p in s.models_dirs] == [str(ROOT / "models" / "store"), "/opt/models"]


def test_nonsense_values_are_refused() -> None:
    with pytest.raises(ValueError, match="inference_batch_size"):
        Settings(inference_batch_size=0)
    with pytest.raises(ValueError, match="store_source_paths"):
        Settings(store_source_paths="some")
