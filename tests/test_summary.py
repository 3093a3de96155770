"""The study aggregation rule (worker/summary.py), on hand-made slice rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from config import Settings
from db.models import SlicePrediction
from models.preprocessing import InputSpec
from models.registry import ModelCard
from worker.summary import summarize

CLASSES = ["benign", "malignant", "normal"]
CARD = ModelCard(
    name="m",
    version="1",
    classes=CLASSES,
    input=InputSpec(8, 8, 1),
    severity=["normal", "benign", "malignant"],
    path=Path("."),
)


def _row(i: int, label: str | None, series: str | None = "s1", p: float = 0.9) -> SlicePrediction:
    probs = None
    if label:
        rest = (1 - p) / 2
        probs = {c: (p if c == label else rest) for c in CLASSES}
    return SlicePrediction(
        slice_index=i,
        source=f"f{i}",
        series_uid=series,
        label=label,
        probabilities=probs,
        error=None if label else "bad slice",
    )


def test_one_stray_abnormal_slice_does_not_flip_a_study() -> None:
    rows = [_row(0, "malignant")] + [_row(i, "normal") for i in range(1, 10)]
    assert summarize(rows, CARD, Settings(min_abnormal_slices=2))["label"] == "normal"


def test_most_severe_class_with_enough_slices_wins() -> None:
    rows = [_row(i, "benign") for i in range(4)] + [_row(i, "malignant") for i in range(4, 6)]
    rows += [_row(i, "normal") for i in range(6, 20)]
    s = summarize(rows, CARD, Settings(min_abnormal_slices=2))
    assert s["label"] == "malignant"
    assert s["slice_counts"] == {"benign": 4, "malignant": 2, "normal": 14}
    assert {t["slice_index"] for t in s["top_slices"][:2]} == {4, 5}


def test_single_image_decides_by_itself() -> None:
    s = summarize([_row(0, "benign")], CARD, Settings(min_abnormal_slices=2))
    assert s["label"] == "benign" and s["slices_predicted"] == 1


def test_series_are_summarised_separately_and_errors_counted() -> None:
    rows = [_row(0, "malignant", "a"), _row(1, "malignant", "a"), _row(2, None, "a")]
    rows += [_row(3, "normal", "b"), _row(4, "normal", "b")]
    s = summarize(rows, CARD, Settings(min_abnormal_slices=2), skipped=1)
    assert [x["series_uid"] for x in s["series"]] == ["a", "b"]
    assert [x["label"] for x in s["series"]] == ["malignant", "normal"]
    assert s["series"][0]["slices_failed"] == 1
    assert s["label"] == "malignant" and s["skipped_files"] == 1
    assert abs(sum(s["probabilities"].values()) - 1) < 1e-6


def test_card_without_severity_uses_majority() -> None:
    card = ModelCard(
        name="m",
        version="1",
        classes=CLASSES,
        input=InputSpec(8, 8, 1),
        severity=[],
        path=Path("."),
    )
    rows = [_row(0, "malignant"), _row(1, "malignant"), _row(2, "benign")]
    assert summarize(rows, card, Settings())["label"] == "malignant"


def _flagged(row: SlicePrediction, flag: bool | None) -> SlicePrediction:
    row.out_of_distribution = flag
    row.ood_score = None if flag is None else (3.0 if flag else 1.0)
    return row


def test_ood_fraction_and_rule_per_series_and_study() -> None:
    rows = [_flagged(_row(i, "normal", "a"), i < 3) for i in range(10)]  # 30 % flagged
    rows += [_flagged(_row(i, "normal", "b"), i == 10) for i in range(10, 30)]  # 5 %
    s = summarize(rows, CARD, Settings())
    a, b = s["series"]
    assert (a["out_of_distribution"], a["ood_fraction"]) == (True, 0.3)
    assert (b["out_of_distribution"], b["ood_fraction"]) == (False, 0.05)
    assert a["ood_warning"].startswith("Out of distribution: 30%") and b["ood_warning"] is None
    # 4 of 30 slices (13 %) is below the rule, but series a is flagged, so the study is
    assert s["ood_fraction"] == round(4 / 30, 4) and s["out_of_distribution"] is True
    assert s["ood_warning"].startswith("Out of distribution: 30% of the slices of series a (13%")
    assert s["label"] == "normal"


def test_ood_rule_reads_the_card_fraction_and_ignores_failed_slices() -> None:
    card = replace(CARD, raw={"ood": {"study_rule": {"min_fraction": 0.5}}})
    rows = [_flagged(_row(0, "normal"), True), _flagged(_row(1, "normal"), False), _row(2, None)]
    s = summarize(rows, card, Settings())
    assert s["ood_fraction"] == 0.5 and s["out_of_distribution"] is True
    assert "50%" in s["ood_rule"]


def test_model_without_ood_detector_reports_null() -> None:
    s = summarize([_row(0, "normal"), _row(1, "normal")], CARD, Settings())
    assert s["out_of_distribution"] is None and s["ood_fraction"] is None
    assert s["ood_warning"] is None and s["ood_rule"] is None
