"""Series selection rules per model (ingest/series_rules.py) and where ingest applies them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config import Settings
from ingest import plan_upload
from ingest.series_rules import (
    FileFacts,
    InvalidRules,
    SeriesRules,
    orientation_name,
    rules_for_model,
)
from tests.fixtures_dicom import series, to_bytes, write_zip

AXIAL_CT = FileFacts("CT", ("ORIGINAL", "PRIMARY", "AXIAL"), 1.25, "axial")


def facts(**changes: object) -> FileFacts:
    return FileFacts(**{**AXIAL_CT.__dict__, **changes})  # type: ignore[arg-type]


def test_the_default_rule_is_todays_settings() -> None:
    rules = SeriesRules.from_settings(Settings(_env_file=None))
    assert rules.problem(AXIAL_CT) is None
    assert "modality MR" in str(rules.problem(facts(modality="MR")))
    assert "localizer" in str(rules.problem(facts(image_type=("ORIGINAL", "LOCALIZER"))))


def test_every_condition_and_any_rule() -> None:
    rules = SeriesRules.parse(
        [
            {
                "modality": ["CT"],
                "image_type": ["AXIAL", "!SCOUT"],
                "slice_thickness": {"min": 0.5, "max": 3},
                "orientation": ["axial"],
            },
            {"modality": "CT", "orientation": ["coronal"]},
        ]
    )
    assert rules.problem(AXIAL_CT) is None
    assert rules.problem(facts(slice_thickness=5.0)) == "slice thickness 5 mm outside 0.5..3 mm"
    assert "unknown" in str(rules.problem(facts(slice_thickness=None)))
    assert rules.problem(facts(image_type=("ORIGINAL",))) == "ImageType lacks AXIAL"
    assert "scout" in str(rules.problem(facts(image_type=("AXIAL", "SCOUT"))))
    assert rules.problem(facts(orientation="coronal", slice_thickness=9.0)) is None  # rule 2
    assert rules.problem(facts(orientation="sagittal")) is not None


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"modality": "CT"},
        [{"modality": 3}],
        [{"colour": "red"}],
        [{"slice_thickness": {"min": "thin"}}],
        [{"orientation": ["upside-down"]}],
    ],
)
def test_malformed_rules_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRules):
        SeriesRules.parse(bad)


def test_orientation_from_image_orientation_patient() -> None:
    assert orientation_name((1, 0, 0, 0, 1, 0)) == "axial"
    assert orientation_name((1, 0, 0, 0, 0, -1)) == "coronal"
    assert orientation_name((0, 1, 0, 0, 0, -1)) == "sagittal"
    assert orientation_name((1, 0, 0, 0, 0.7071, 0.7071)) == "oblique"
    assert orientation_name(None) is None


def test_rules_come_from_the_card_or_a_file_next_to_it(tmp_path: Path) -> None:
    settings = Settings(_env_file=None)
    card_rules = rules_for_model({"series_rules": [{"modality": ["MR"]}]}, tmp_path, settings)
    assert card_rules.problem(facts(modality="MR")) is None
    (tmp_path / "series_rules.json").write_text(json.dumps([{"orientation": ["coronal"]}]))
    assert rules_for_model({}, tmp_path, settings).problem(AXIAL_CT) is not None
    assert rules_for_model({}, tmp_path / "none", settings) == SeriesRules.from_settings(settings)


def test_plan_upload_applies_a_models_rules(tmp_path: Path) -> None:
    """Thick and thin series: the default keeps both, a thickness rule keeps one."""
    thin = series("1.2.3.1", [0.0, 1.0])
    thick = series("1.2.3.2", [0.0, 5.0])
    for ds in thin:
        ds.SliceThickness = 1.0
    for ds in thick:
        ds.SliceThickness = 5.0
    path = write_zip(
        tmp_path / "s.zip", [(f"{i}.dcm", to_bytes(d)) for i, d in enumerate(thin + thick)]
    )
    settings = Settings(_env_file=None)
    assert len(plan_upload(path, settings).slices) == 4
    rules = SeriesRules.parse([{"slice_thickness": {"max": 2}}])
    plan = plan_upload(path, settings, rules=rules)
    assert {s.series_uid for s in plan.slices} == {"1.2.3.1"}
    assert any("slice thickness 5 mm" in s.reason for s in plan.skipped)
