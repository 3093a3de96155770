"""Study- and series-level verdicts from per-slice predictions.

The rule (documented in the README, "Aggregation rule"):

1. Only slices the model could read count; slices with errors are reported
   as ``slices_failed``.
2. ``slice_counts`` counts the per-slice labels (arg-max of the probabilities).
3. The verdict walks the card's ``severity`` order from the most severe class
   down: the first abnormal class with at least ``MIN_ABNORMAL_SLICES`` slices
   (default 2, capped at the number of readable slices, so a single image
   decides by itself) is the label. If none qualifies, the label is the least
   severe class (``normal``). One stray slice therefore does not flip a study;
   a lesion visible on consecutive slices does. A model whose card has no
   severity order falls back to the majority label.
4. ``probabilities`` are the mean slice probabilities; ``top_slices`` are the
   slices with the highest probability for the verdict's class: the slices
   that drove it, for a radiologist to look at first.
5. Out of distribution: ``ood_fraction`` is the fraction of readable slices
   flagged ``out_of_distribution`` (models/ood.py). A series is
   ``out_of_distribution`` when that fraction is at least the card's
   ``ood.study_rule.min_fraction`` (default 0.25); the study when its own
   fraction is, or when any of its series is. A flagged summary carries an
   ``ood_warning`` sentence next to the label. Both are null for a model
   without an OOD detector.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from config import Settings
from db.records import SliceResult
from models.ood import STUDY_MIN_FRACTION
from models.registry import ModelCard

DISCLAIMER = "Research use only. Not for clinical diagnosis."


class SeriesName(NamedTuple):
    """How a DICOM series is called: SeriesDescription and SeriesNumber."""

    description: str | None
    number: int | None


def series_names(series: Iterable[Any]) -> dict[str, SeriesName]:
    """Names of the series of an upload plan (``ingest.SeriesInfo`` items) by UID."""
    return {s.series_uid: SeriesName(s.description, s.series_number) for s in series}


def _ood_min_fraction(card: ModelCard) -> float:
    rule = (card.raw.get("ood") or {}).get("study_rule") or {}
    return float(rule.get("min_fraction", STUDY_MIN_FRACTION))


def _ood(ok: Sequence[SliceResult], card: ModelCard) -> dict[str, Any]:
    """``ood_fraction`` and ``out_of_distribution`` of one group (rule 5)."""
    known = [r.out_of_distribution for r in ok if r.out_of_distribution is not None]
    if not known:
        return {"out_of_distribution": None, "ood_fraction": None}
    fraction = sum(known) / len(known)
    return {
        "out_of_distribution": fraction >= _ood_min_fraction(card),
        "ood_fraction": round(fraction, 4),
    }


def _ood_warning(group: dict[str, Any]) -> str | None:
    if not group.get("out_of_distribution"):
        return None
    return (
        f"Out of distribution: {group['ood_fraction']:.0%} of the slices are unlike the data "
        "the model was trained on; it cannot judge them, so do not rely on this label."
    )


def _series_name(group: dict[str, Any]) -> str:
    """'series 2 (5mm)' when known, else the series UID."""
    if group.get("series_number") is None:
        return f"series {group['series_uid']}"
    described = f" ({group['series_description']})" if group.get("series_description") else ""
    return f"series {group['series_number']}{described}"


def _verdict(counts: Counter[str], card: ModelCard, readable: int, min_slices: int) -> str:
    """Apply the severity rule (module docstring, step 3)."""
    severity = [c for c in (card.severity or []) if c in card.classes]
    if not severity:
        return counts.most_common(1)[0][0]
    needed = max(1, min(min_slices, readable))
    for cls in reversed(severity[1:]):
        if counts[cls] >= needed:
            return cls
    return severity[0]


def _top(rows: Sequence[SliceResult], label: str, k: int) -> list[dict[str, Any]]:
    best = sorted(rows, key=lambda r: (-(r.probabilities or {}).get(label, 0.0), r.slice_index))
    return [
        {
            "slice_index": r.slice_index,
            "source": r.source,
            "series_uid": r.series_uid,
            "instance_number": r.instance_number,
            "slice_position": r.slice_position,
            "probability": (r.probabilities or {}).get(label, 0.0),
        }
        for r in best[:k]
    ]


def summarize_group(
    rows: Sequence[SliceResult], card: ModelCard, settings: Settings
) -> dict[str, Any]:
    """Verdict, mean probabilities, counts and top slices for one group of slices."""
    ok = [r for r in rows if r.probabilities is not None and r.label is not None]
    result: dict[str, Any] = {"slices_predicted": len(ok), "slices_failed": len(rows) - len(ok)}
    if not ok:
        return {
            **result,
            "label": None,
            "out_of_distribution": None,
            "ood_fraction": None,
            "probabilities": None,
            "slice_counts": {},
            "top_slices": [],
        }
    counts = Counter(r.label for r in ok if r.label)
    label = _verdict(counts, card, len(ok), settings.min_abnormal_slices)
    probabilities = [r.probabilities for r in ok if r.probabilities is not None]  # all of ok
    mean = {c: round(sum(p[c] for p in probabilities) / len(ok), 6) for c in card.classes}
    return {
        **result,
        "label": label,
        **_ood(ok, card),
        "probabilities": mean,
        "slice_counts": {c: counts.get(c, 0) for c in card.classes},
        "top_slices": _top(ok, label, settings.summary_top_slices),
    }


def _rule_text(card: ModelCard, settings: Settings) -> str:
    """The rule applied, in words, so a reader of the result need not find the README."""
    if not card.severity:
        return "majority slice label (the model card gives no severity order)"
    return (
        f"most severe class with >= {settings.min_abnormal_slices} slices "
        f"(severity order {' < '.join(card.severity)}), else {card.severity[0]}"
    )


def summarize(
    rows: Sequence[SliceResult],
    card: ModelCard,
    settings: Settings,
    skipped: int = 0,
    names: Mapping[str, SeriesName] | None = None,
) -> dict[str, Any]:
    """The job summary: the whole study, then each series in upload order.

    ``names`` gives each DICOM series its SeriesDescription and SeriesNumber
    (what a radiologist calls it; not identifiers, and scrubbed by ingest).
    """
    groups: dict[str | None, list[SliceResult]] = {}
    for r in rows:
        groups.setdefault(r.series_uid, []).append(r)
    # keyed like groups: images have no series UID (None)
    named: dict[str | None, SeriesName] = {uid: name for uid, name in (names or {}).items()}
    series = [
        {
            "series_uid": uid,
            "series_description": named[uid].description if uid in named else None,
            "series_number": named[uid].number if uid in named else None,
            **summarize_group(group, card, settings),
        }
        for uid, group in groups.items()
    ]
    study = summarize_group(rows, card, settings)
    for group in series:
        group["ood_warning"] = _ood_warning(group)
    study["ood_warning"] = _ood_warning(study)
    flagged = [s for s in series if s["out_of_distribution"]]
    if flagged and not study["out_of_distribution"]:  # rule 5: any flagged series flags it
        study["out_of_distribution"] = True
        worst = max(flagged, key=lambda s: s["ood_fraction"])
        name = _series_name(worst)
        study["ood_warning"] = (
            f"Out of distribution: {worst['ood_fraction']:.0%} of the slices of {name} "
            f"({study['ood_fraction']:.0%} of the study) are unlike the "
            "data the model was trained on; it cannot judge them, so do not rely on this label."
        )
    return {
        **study,
        "series": series,
        "skipped_files": skipped,
        "rule": _rule_text(card, settings),
        "ood_rule": _ood_rule_text(card),
        "disclaimer": DISCLAIMER,
    }


def _ood_rule_text(card: ModelCard) -> str | None:
    if not card.raw.get("ood"):
        return None
    return (
        f"a series is out of distribution when >= {_ood_min_fraction(card):.0%} of its "
        "readable slices are flagged; the study when its slices are, or any series is"
    )
