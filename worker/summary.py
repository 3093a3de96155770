"""Study- and series-level verdicts from per-slice predictions.

The rule (docs/review.md, "The verdict", with its validation):

1. Only slices the model could read count; slices with errors are reported
   as ``slices_failed``.
2. ``slice_counts`` counts the per-slice labels (arg-max of the probabilities).
3. ``label`` (the model output) walks the card's ``severity`` order from the
   most severe class down: the first abnormal class with at least
   ``needed = max(MIN_ABNORMAL_SLICES, ceil(MIN_ABNORMAL_FRACTION x readable))``
   slices (capped at the readable slices, so a single image decides by itself)
   is the label; if none qualifies, the least severe class (``normal``). The
   fraction makes the rule fair to study size: two stray slices do not flip a
   2,000-slice study, while a lesion seen on a tenth of the slices does. A card
   without a severity order falls back to the majority label.
4. ``verdict`` is what every surface headlines: the label, or
   ``"inconclusive"`` when the group is out of distribution (rule 6), because
   the model cannot judge such slices. ``evidence`` holds the rule's numbers
   (readable slices, slices needed, the count and share behind the label) and
   ``verdict_text`` says them in one sentence.
5. ``probabilities`` are the mean slice probabilities. ``top_slices`` are the
   most suspicious slices first: highest probability of the most severe class
   (``top_class``), whatever the verdict. Each carries ``heatmap`` (False
   here); worker/images.py ``store_heatmaps`` sets it to True, and lists
   ``heatmaps``, for the slices whose heat map it stored.
6. Out of distribution: ``ood_fraction`` is the fraction of readable slices
   flagged ``out_of_distribution`` (models/ood.py). A series is
   ``out_of_distribution`` when that fraction is at least the card's
   ``ood.study_rule.min_fraction`` (default 0.25); the study when its own
   fraction is, or when any of its series is. A flagged summary carries an
   ``ood_warning`` sentence. Both are null for a model without an OOD detector.
"""

from __future__ import annotations

import math
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


INCONCLUSIVE = "inconclusive"
"""The verdict of a study or series the model cannot judge (out of distribution)."""


def needed_slices(readable: int, settings: Settings) -> int:
    """Slices an abnormal class needs (rule 3): a floor and a fraction, capped at ``readable``."""
    by_fraction = math.ceil(settings.min_abnormal_fraction * readable - 1e-9)
    return max(1, min(max(settings.min_abnormal_slices, by_fraction), readable))


def _label(counts: Counter[str], card: ModelCard, needed: int) -> str:
    """Apply the severity rule (module docstring, rule 3)."""
    severity = _severity(card)
    if not severity:
        return counts.most_common(1)[0][0]
    for cls in reversed(severity[1:]):
        if counts[cls] >= needed:
            return cls
    return severity[0]


def _severity(card: ModelCard) -> list[str]:
    return [c for c in (card.severity or []) if c in card.classes]


def top_class(card: ModelCard) -> str:
    """The class whose probability ranks the top slices: the most severe one."""
    severity = _severity(card)
    return severity[-1] if severity else card.classes[0]


def _top(rows: Sequence[SliceResult], cls: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` most suspicious slices (rule 5), most suspicious first."""
    best = sorted(rows, key=lambda r: (-(r.probabilities or {}).get(cls, 0.0), r.slice_index))
    return [
        {
            "slice_index": r.slice_index,
            "source": r.source,
            "series_uid": r.series_uid,
            "instance_number": r.instance_number,
            "slice_position": r.slice_position,
            "label": r.label,
            "probability": (r.probabilities or {}).get(cls, 0.0),
            "heatmap": False,
        }
        for r in best[:k]
    ]


def _evidence(counts: Counter[str], label: str, readable: int, needed: int) -> dict[str, Any]:
    """The rule's numbers behind ``label`` (rule 4)."""
    return {
        "readable_slices": readable,
        "needed_slices": needed,
        "label_slices": counts.get(label, 0),
        "label_fraction": round(counts.get(label, 0) / readable, 4),
    }


def _verdict_text(group: dict[str, Any], card: ModelCard) -> str | None:
    """One sentence with the verdict and the numbers that make it (rule 4)."""
    label, ev = group.get("label"), group.get("evidence")
    if label is None or not ev:
        return None
    n, k, share = ev["readable_slices"], ev["label_slices"], ev["label_fraction"]
    if group.get("verdict") == INCONCLUSIVE:
        return (
            f"inconclusive: {group['ood_fraction']:.0%} of the slices are out of distribution; "
            f"model output {label} ({k} of {n} slices) is not a diagnosis"
        )
    severity = _severity(card)
    if not severity:
        return f"{label}: the majority label, {k} of {n} slices ({share:.0%})"
    if label != severity[0]:
        return f"{label}: {k} of {n} slices ({share:.0%}); the rule needs {ev['needed_slices']}"
    return (
        f"{label}: no abnormal class reaches {ev['needed_slices']} of {n} slices "
        f"({label} {k}, {share:.0%})"
    )


def _set_verdict(group: dict[str, Any], card: ModelCard) -> None:
    """``verdict`` and ``verdict_text`` from the label and the OOD flag (rule 4)."""
    label = group.get("label")
    group["verdict"] = (
        INCONCLUSIVE if label is not None and group.get("out_of_distribution") else label
    )
    group["verdict_text"] = _verdict_text(group, card)


def summarize_group(
    rows: Sequence[SliceResult], card: ModelCard, settings: Settings
) -> dict[str, Any]:
    """Label, mean probabilities, counts, evidence and top slices for one group of slices."""
    ok = [r for r in rows if r.probabilities is not None and r.label is not None]
    result: dict[str, Any] = {"slices_predicted": len(ok), "slices_failed": len(rows) - len(ok)}
    if not ok:
        return {
            **result,
            "label": None,
            "verdict": None,
            "verdict_text": None,
            "evidence": None,
            "out_of_distribution": None,
            "ood_fraction": None,
            "probabilities": None,
            "slice_counts": {},
            "top_class": top_class(card),
            "top_slices": [],
        }
    counts = Counter(r.label for r in ok if r.label)
    needed = needed_slices(len(ok), settings)
    label = _label(counts, card, needed)
    probs = [r.probabilities or {} for r in ok]
    mean = {c: round(sum(p.get(c, 0.0) for p in probs) / len(ok), 6) for c in card.classes}
    group = {
        **result,
        "label": label,
        "evidence": _evidence(counts, label, len(ok), needed),
        **_ood(ok, card),
        "probabilities": mean,
        "slice_counts": {c: counts.get(c, 0) for c in card.classes},
        "top_class": top_class(card),
        "top_slices": _top(ok, top_class(card), settings.summary_top_slices),
    }
    _set_verdict(group, card)
    return group


def _rule_text(card: ModelCard, settings: Settings) -> str:
    """The rule applied, in words, so a reader of the result need not find the docs."""
    if not card.severity:
        return "majority slice label (the model card gives no severity order)"
    return (
        f"most severe class on >= max({settings.min_abnormal_slices}, "
        f"{settings.min_abnormal_fraction:.0%} of the readable) slices "
        f"(severity order {' < '.join(card.severity)}), else {card.severity[0]}; "
        f"{INCONCLUSIVE} when out of distribution"
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
    known = names or {}
    unnamed = SeriesName(None, None)
    series = [
        {
            "series_uid": uid,
            "series_description": known.get(uid or "", unnamed).description,
            "series_number": known.get(uid or "", unnamed).number,
            **summarize_group(group, card, settings),
        }
        for uid, group in groups.items()
    ]
    study = summarize_group(rows, card, settings)
    for group in series:
        group["ood_warning"] = _ood_warning(group)
    study["ood_warning"] = _ood_warning(study)
    flagged = [s for s in series if s["out_of_distribution"]]
    if flagged and not study["out_of_distribution"]:  # rule 6: any flagged series flags it
        study["out_of_distribution"] = True
        worst = max(flagged, key=lambda s: s["ood_fraction"])
        name = _series_name(worst)
        study["ood_warning"] = (
            f"Out of distribution: {worst['ood_fraction']:.0%} of the slices of {name} "
            f"({study['ood_fraction']:.0%} of the study) are unlike the "
            "data the model was trained on; it cannot judge them, so do not rely on this label."
        )
        _set_verdict(study, card)
    return {
        **study,
        "series": series,
        "heatmaps": [],
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
