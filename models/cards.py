"""Writing model cards: the machine-readable card.json and the human card.md.

card.json follows docs/architecture.md (read back by :mod:`models.registry`); card.md
is what a person reads before trusting a model: data provenance and citation, the
split method with its case lists, metrics, intended use and limitations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.data import Dataset, Split, split_file_lists
from models.preprocessing import InputSpec

INTENDED_USE = "research use, not for clinical diagnosis"
IQOTH_CITATION = "H. Alyasriy, M. AL-Huseiny, The IQ-OTH/NCCD lung cancer dataset, Mendeley Data"
LIMITATIONS = [
    "Trained on 2-D axial slices exported as 8-bit JPEG whose display window is narrow, like a "
    "soft-tissue/mediastinal window: lung parenchyma is black (90% of pixels <= 2). The "
    "service therefore renders DICOM with a training-matched window (150/500 HU, "
    "DICOM_WINDOW_CENTER/WIDTH; measured on one patient, see ingest/README.md); a lung "
    "window (-600/1500) would be out of distribution for this model.",
    "Small data: about 110 patients from one hospital (Iraq, 2019); performance on other "
    "scanners, protocols and populations is unknown.",
    "Metrics come from a small held-out test split (tens of patients at most) and have wide "
    "confidence intervals; the benign class in particular has few patients.",
    "Slice-level classifier: it has no notion of a nodule's 3-D extent, size or growth.",
    "Not a medical device; research use only, not for clinical diagnosis.",
]


def severity_order(classes: list[str], explicit: str | None = None) -> list[str]:
    """Least to most severe: explicit list, else normal-like, then benign-like, then the rest."""
    if explicit:
        order = [c.strip() for c in explicit.split(",") if c.strip()]
        if sorted(order) != sorted(classes):
            raise ValueError(f"--severity {order} must list exactly the classes {classes}")
        return order

    def rank(name: str) -> int:
        low = name.lower()
        return 0 if ("normal" in low or "healthy" in low) else 1 if "benign" in low else 2

    return sorted(classes, key=lambda c: (rank(c), classes.index(c)))


def _data_section(dataset: Dataset) -> dict[str, Any]:
    """Where the images came from; the IQ-OTH/NCCD citation when it is that dataset."""
    counts = {c: int((dataset.labels == k).sum()) for k, c in enumerate(dataset.classes)}
    is_iqoth = "iqoth" in dataset.root.name.lower().replace("-", "")
    return {
        "dataset": "IQ-OTH/NCCD lung cancer dataset" if is_iqoth else dataset.root.name,
        "citation": IQOTH_CITATION if is_iqoth else None,
        "source": "Iraq-Oncology Teaching Hospital / National Center for Cancer Diseases, 2019"
        if is_iqoth
        else None,
        "folder": dataset.root.name,
        "images": len(dataset.paths),
        "per_class": counts,
    }


def build_card(
    args: argparse.Namespace,
    spec: InputSpec,
    dataset: Dataset,
    split: Split,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """The card.json dictionary (schema: docs/architecture.md)."""
    return {
        "name": args.name or args.out.name,
        "version": args.version,
        "architecture": args.arch,
        "classes": list(dataset.classes),
        "input": spec.to_dict(),
        "preprocessing": {
            "resize": "bilinear",
            "scale": "x/255",
            "function": "models.preprocessing.preprocess",
        },
        "severity": severity_order(list(dataset.classes), args.severity),
        "file": "model.keras",
        "metrics": {"split": split.method, "val": metrics["val"], "test": metrics["test"]},
        "data": _data_section(dataset),
        "split": {
            "method": split.method,
            "params": split.params,
            "audit": split.audit,
            "files": split_file_lists(dataset, split),
        },
        "training": training,
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }


def write_card(card: dict[str, Any], out: Path) -> None:
    """Write card.json and card.md into the model folder."""
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (out / "card.md").write_text(render_markdown(card), encoding="utf-8")


def _metrics_table(test: dict[str, Any]) -> list[str]:
    auc = test["roc_auc_ovr"]
    rows = [
        "| class | precision | recall | F1 | ROC-AUC (OvR) | support |",
        "|---|---|---|---|---|---|",
    ]
    for cls, m in test["per_class"].items():
        a = "n/a" if auc.get(cls) is None else f"{auc[cls]:.3f}"
        rows.append(
            f"| {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
            f"| {a} | {m['support']} |"
        )
    return rows


def _case_lists(files: dict[str, list[str]]) -> list[str]:
    """Compact ``class: 1-12, 30-41`` ranges of case numbers per split (full list in json)."""
    from models.data import case_number

    lines = []
    if any("#" in f for names in files.values() for f in names):  # slices of studies
        for split_name, names in files.items():
            studies = sorted({f.split("#")[0] for f in names})
            lines.append(f"- **{split_name}** ({len(studies)} studies): " + ", ".join(studies))
        return lines
    for split_name, names in files.items():
        by_class: dict[str, list[int | str]] = {}
        for f in names:
            cls, _, base = f.partition("/")
            num = case_number(Path(base))
            by_class.setdefault(cls, []).append(num if num is not None else base)
        parts = [f"{cls} ({len(v)}): {_ranges(v)}" for cls, v in sorted(by_class.items())]
        lines.append(f"- **{split_name}**: " + "; ".join(parts))
    return lines


def _ranges(values: list[int | str]) -> str:
    """``[1, 2, 3, 7]`` -> ``1-3, 7``; names are listed as they are."""
    nums = sorted(v for v in values if isinstance(v, int))
    out: list[str] = []
    start: int | None = None
    prev = 0  # read only once start is set
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    out += [str(v) for v in values if not isinstance(v, int)]
    return ", ".join(out)


def render_markdown(card: dict[str, Any]) -> str:
    """The human-readable model card."""
    test, tr, data = card["metrics"]["test"], card["training"], card["data"]
    audit = card["split"]["audit"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        f"**Intended use:** {card['intended_use']}. Outputs must not be used to diagnose, "
        "treat or triage patients.",
        "",
        "## Model",
        "",
        f"- Architecture: `{card['architecture']}` ({tr['params']:,} parameters), "
        f"input {card['input']['height']}x{card['input']['width']}x"
        f"{card['input']['channels']}, preprocessing: Pillow bilinear resize, x/255.",
        f"- Classes: {', '.join(card['classes'])}; severity (least to most): "
        f"{', '.join(card['severity'])}.",
        f"- Trained for {tr['epochs_run']} epochs (best validation epoch {tr['best_epoch']}) in "
        f"{tr['train_seconds']:.0f} s on {tr['device']}.",
        f"- Reproduce: `{tr['command']}`",
        *_selection_lines(tr),
        "",
        "## Data",
        "",
        f"- {data['dataset']}: {data['images']} images, per class {data['per_class']}.",
    ]
    if data.get("citation"):
        lines += [f"- Source: {data['source']}.", f"- Citation: {data['citation']}."]
    lines += [
        "",
        "## Split (no patient crosses splits)",
        "",
        f"- Method: {card['split']['method']}.",
        f"- {audit['groups']} groups; groups crossing splits: {audit['groups_crossing_splits']}; "
        f"closest test-to-train pHash distance per class: "
        f"{audit['min_phash_distance_test_to_train']}.",
        f"- Images per split: {audit['counts']}.",
        "- Case numbers per split (full file lists in card.json):",
        "",
        *_case_lists(card["split"]["files"]),
        "",
        "## Test-split metrics (scored once, after model selection on validation)",
        "",
        f"- Accuracy **{test['accuracy']:.3f}**, macro-F1 **{test['macro_f1']:.3f}**, "
        f"macro ROC-AUC (OvR) {_fmt(test['roc_auc_ovr'].get('macro'))}, n = {test['n']}.",
        "",
        *_metrics_table(test),
        "",
        f"Confusion matrix (rows true, columns predicted, order {card['classes']}): "
        f"`{test['confusion_matrix']}`. See confusion_matrix.png and training_curves.png.",
        "",
        *_ood_lines(card.get("ood")),
        *_calibration_lines(card.get("calibration")),
        *_cv_lines(card.get("cv")),
        "## Limitations",
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def _ood_lines(ood: dict[str, Any] | None) -> list[str]:
    """The out-of-distribution section: method, threshold and its validation figures."""
    if not ood:
        return []
    val = ood["validation"]
    rates = ", ".join(f"{s} {r:.1%}" for s, r in ood["flag_rate"].items())
    lines = [
        "## Out-of-distribution detection",
        "",
        f"- Method: {ood['method']}.",
        f"- Features: {ood.get('feature_vectors', 1)} vectors, the last one the input of layer "
        f"`{ood['feature_layer']}`; detector in `{ood['file']}`.",
        f"- Threshold **{ood['threshold']:.3f}** (ood_score): validation slices "
        f"flagged **{val['flagged']} of {val['n']} ({val['flag_rate']:.1%})**, "
        f"{val['flagged_by_input_checks']} of them by the input checks "
        f"(target <= {ood['target_rate']:.0%}).",
        f"- Slices flagged per split: {rates} (the training split was used to fit).",
        f"- Study and series rule: {ood['study_rule']['text']}.",
    ]
    groups = ood["study_rule"].get("validation_groups")
    if groups:
        lines.append(
            f"- Validation groups of the grouped split (case-number blocks) flagged by that rule: "
            f"{groups['groups_flagged']} of {groups['groups']} (largest flagged fraction "
            f"in a group {groups['max_group_fraction']:.0%})."
        )
    return [*lines, ""]


def _calibration_lines(cal: dict[str, Any] | None) -> list[str]:
    """The calibration section: temperature, ECE before/after, the reliability diagram."""
    if not cal:
        return []
    lines = [
        "## Calibration",
        "",
        f"- {cal['method'][0].upper()}{cal['method'][1:]}: temperature "
        f"**{cal['temperature']:.3f}**.",
    ]
    for split_name, e in cal["ece"].items():
        n = cal["nll"][split_name]
        lines.append(
            f"- {split_name}: expected calibration error ({cal['ece_bins']} bins) "
            f"{e['before']:.3f} -> **{e['after']:.3f}**; NLL {n['before']:.3f} -> {n['after']:.3f}."
        )
    lines += ["", f"![reliability diagram]({cal['figure']})", ""]
    return lines


def _cv_lines(cv: dict[str, Any] | None) -> list[str]:
    """The cross-validation section: the recipe's grouped K-fold figures with spread."""
    if not cv:
        return []
    return [
        "## Grouped cross-validation (model selection)",
        "",
        f"- {cv['method']}.",
        f"- Reproduce: `{cv['command']}`",
        "",
        cv["table"].rstrip(),
        "",
    ]


def _selection_lines(training: dict[str, Any]) -> list[str]:
    """How the configuration was chosen (validation only), when the card records it."""
    selection = training.get("selection")
    if not selection:
        return []
    lines = [f"- Configuration selection: {selection['rule']}. Validation macro-F1 per run:"]
    lines += [f"  - {run}: {f1:.3f}" for run, f1 in selection["runs_val_macro_f1"].items()]
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
