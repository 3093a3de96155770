"""The study aggregation rule (worker/summary.py), on hand-made slice rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from config import Settings
from db.models import SlicePrediction
from models.preprocessing import InputSpec
from models.registry import ModelCard
from worker.images import mark_heatmaps, top_slices
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


def test_two_slices_do_not_flip_a_large_study_but_a_tenth_does() -> None:
    """Size-fair rule: 2 of 2,001 slices stay 'normal'; 201 (>= 10 %) make it malignant."""
    settings = Settings(min_abnormal_slices=2, min_abnormal_fraction=0.1)
    rows = [_row(i, "malignant") for i in range(2)] + [_row(i, "normal") for i in range(2, 2001)]
    s = summarize(rows, CARD, settings)
    assert (s["label"], s["verdict"]) == ("normal", "normal")
    assert s["evidence"] == {
        "readable_slices": 2001,
        "needed_slices": 201,
        "label_slices": 1999,
        "label_fraction": round(1999 / 2001, 4),
    }
    assert "no abnormal class reaches 201 of 2001 slices" in s["verdict_text"]
    rows = [_row(i, "malignant") for i in range(201)] + [
        _row(i, "normal") for i in range(201, 2001)
    ]
    s = summarize(rows, CARD, settings)
    assert s["verdict"] == "malignant"
    assert s["verdict_text"] == "malignant: 201 of 2001 slices (10%); the rule needs 201"


def test_out_of_distribution_verdict_is_inconclusive_and_keeps_the_model_output() -> None:
    rows = [_flagged(_row(i, "normal", "a"), i < 5) for i in range(10)]
    s = summarize(rows, CARD, Settings())
    assert s["label"] == "normal" and s["verdict"] == "inconclusive"
    assert s["series"][0]["verdict"] == "inconclusive"
    assert s["verdict_text"].startswith("inconclusive: 50% of the slices are out of distribution")
    assert "model output normal" in s["verdict_text"]


def test_study_flagged_through_one_series_is_inconclusive() -> None:
    rows = [_flagged(_row(i, "normal", "a"), i < 3) for i in range(10)]
    rows += [_flagged(_row(i, "normal", "b"), False) for i in range(10, 40)]
    s = summarize(rows, CARD, Settings())
    assert s["ood_fraction"] < 0.25 and s["verdict"] == "inconclusive"
    assert [x["verdict"] for x in s["series"]] == ["inconclusive", "normal"]


def test_top_slices_are_the_most_suspicious_even_for_a_normal_verdict() -> None:
    rows = [_row(i, "normal", p=0.95) for i in range(10)]
    rows[7] = _row(7, "malignant", p=0.6)
    rows[3] = _row(3, "benign", p=0.5)  # p(malignant) = 0.25
    s = summarize(rows, CARD, Settings(summary_top_slices=3))
    assert s["verdict"] == "normal" and s["top_class"] == "malignant"
    assert [t["slice_index"] for t in s["top_slices"]] == [7, 3, 0]
    assert s["top_slices"][0]["label"] == "malignant"
    assert not any(t["heatmap"] for t in s["top_slices"]) and s["heatmaps"] == []


def test_heat_maps_are_planned_for_every_shown_top_slice_and_marked() -> None:
    rows = [
        _row(i, "malignant" if i in (2, 12) else "normal", "a" if i < 10 else "b")
        for i in range(20)
    ]
    s = summarize(rows, CARD, Settings(summary_top_slices=2))
    chosen = top_slices(s, per_series=1)
    assert set(chosen) == {t["slice_index"] for t in s["top_slices"]} | {2, 12}
    assert set(chosen.values()) == {"malignant"}
    mark_heatmaps(s, {2})
    assert s["heatmaps"] == [2]
    assert [t["heatmap"] for t in s["top_slices"]] == [
        t["slice_index"] == 2 for t in s["top_slices"]
    ]
    assert s["series"][0]["top_slices"][0]["heatmap"] is True
    assert s["series"][1]["top_slices"][0]["heatmap"] is False
