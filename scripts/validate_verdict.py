"""Validate the study verdict rule (worker/summary.py) on the studies we have.

    PYTHONPATH=$PWD .venv/bin/python scripts/validate_verdict.py [DATA_DIR]

Predicts every IQ-OTH/NCCD slice and the real Lung-PET-CT-Dx study once with the
shipped model (worker.inference, exactly as the worker serves it), then runs the
service's own ``summarize`` over:

1. pseudo-studies: each class's slices cut into blocks of 16 contiguous case
   numbers (the card's split groups; consecutive numbers are adjacent slices of
   one patient), reported for the val+test blocks (unseen in training) and for
   all blocks, under MIN_ABNORMAL_FRACTION 0 (the old rule: 2 slices), 0.1
   (the default) and 0.2;
2. size: studies of 16 to 2,001 slices drawn (with replacement, 100 each, seed
   1) from the val+test slices of one class, to show whether a verdict depends
   on the study's size rather than on its content;
3. the real DICOM study (2 series of 64 slices, adenocarcinoma).

Prints Markdown tables (docs/review.md holds a run). About 3 minutes on 2 shared CPUs.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from config import Settings, get_settings
from db.models import SlicePrediction
from ingest import plan_upload
from ingest.images import decode_image
from models.preprocessing import preprocess
from models.registry import Registry
from worker.inference import Predictor, get_predictor
from worker.summary import summarize

FRACTIONS = (0.0, 0.1, 0.2)
BLOCK = 16
SIZES = (16, 64, 300, 2001)
DRAWS = 100


def _rows(preds: list[tuple[np.ndarray, bool | None]], classes: list[str]) -> list[SlicePrediction]:
    rows = []
    for i, (p, ood) in enumerate(preds):
        probs = {c: float(v) for c, v in zip(classes, p, strict=True)}
        rows.append(
            SlicePrediction(
                slice_index=i,
                source=f"#{i}",
                series_uid="s",
                label=classes[int(np.argmax(p))],
                probabilities=probs,
                out_of_distribution=ood,
            )
        )
    return rows


def _predict(
    predictor: Predictor, images: list[np.ndarray]
) -> list[tuple[np.ndarray, bool | None]]:
    out: list[tuple[np.ndarray, bool | None]] = []
    for start in range(0, len(images), 64):
        batch = np.stack([preprocess(x, predictor.card.input) for x in images[start : start + 64]])
        r = predictor.predict(batch)
        flags = r.out_of_distribution
        out += [
            (r.probabilities[j], None if flags is None else bool(flags[j]))
            for j in range(len(batch))
        ]
    return out


def _pseudo_studies(data: Path, predictor: Predictor) -> dict[tuple[str, str, int], list]:
    split = {
        f: part
        for part in ("train", "val", "test")
        for f in predictor.card.raw["split"]["files"][part]
    }
    files = sorted((data / "iqoth-nccd").glob("*/*.jpg"))
    preds = _predict(predictor, [decode_image(f.read_bytes(), 10**8) for f in files])
    studies: dict[tuple[str, str, int], list] = defaultdict(list)
    for f, p in zip(files, preds, strict=True):
        number = int(re.findall(r"\d+", f.stem)[-1])
        key = f"{f.parent.name}/{f.name}"
        studies[(f.parent.name, split.get(key, "?"), (number - 1) // BLOCK)].append(p)
    return studies


def _verdict(preds: list, predictor: Predictor, fraction: float) -> str:
    return _verdicts(preds, predictor, [fraction])[0]


def _verdicts(preds: list, predictor: Predictor, fractions: list[float]) -> list[str]:
    """The verdict of one study under each fraction (its rows built once)."""
    rows = _rows(preds, predictor.card.classes)
    return [
        summarize(rows, predictor.card, Settings(min_abnormal_fraction=f))["verdict"]
        for f in fractions
    ]


def table_pseudo(studies: dict, predictor: Predictor) -> None:
    print("| studies | rule | correct | normal | benign | malignant | wrong verdicts |")
    print("|---|---|---|---|---|---|---|")
    for name, parts in (("val+test", {"val", "test"}), ("all", {"train", "val", "test"})):
        chosen = {k: v for k, v in studies.items() if k[1] in parts}
        for f in FRACTIONS:
            ok: Counter[str] = Counter()
            total: Counter[str] = Counter()
            wrong: Counter[str] = Counter()
            for (cls, _, _), preds in chosen.items():
                v = _verdict(preds, predictor, f)
                total[cls] += 1
                ok[cls] += v == cls
                if v != cls:
                    wrong[f"{cls}->{v}"] += 1
            cells = " | ".join(f"{ok[c]}/{total[c]}" for c in ("normal", "benign", "malignant"))
            errors = ", ".join(f"{k} {n}" for k, n in sorted(wrong.items())) or "none"
            score = f"{sum(ok.values())}/{len(chosen)}"
            print(f"| {name} ({len(chosen)}) | {f:.0%} | {score} | {cells} | {errors} |")


def table_sizes(studies: dict, predictor: Predictor) -> None:
    print("\n| class of every slice | slices | 0% (2 slices) | 10% (default) | 20% |")
    print("|---|---|---|---|---|")
    rng = random.Random(1)
    for cls in ("normal", "benign", "malignant"):
        pool = [
            p
            for (c, part, _), ps in studies.items()
            if c == cls and part in ("val", "test")
            for p in ps
        ]
        for n in SIZES:
            got: list[Counter[str]] = [Counter() for _ in FRACTIONS]
            for _ in range(DRAWS):
                for tally, v in zip(
                    got, _verdicts(rng.choices(pool, k=n), predictor, list(FRACTIONS)), strict=True
                ):
                    tally[v] += 1
            cells = [", ".join(f"{k} {v / DRAWS:.0%}" for k, v in t.most_common()) for t in got]
            print(f"| {cls} ({len(pool)} slices) | {n} | " + " | ".join(cells) + " |")


def table_dicom(data: Path, predictor: Predictor, settings: Settings) -> None:
    study = data / "lung-pet-ct-dx" / "Lung_Dx-A0001"
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "study.zip"
        with zipfile.ZipFile(upload, "w") as zf:
            for p in sorted(study.rglob("*.dcm")):
                zf.write(p, p.relative_to(study).as_posix())
        with plan_upload(upload, settings, filename="study.zip") as plan:
            preds = _predict(predictor, [s.load() for s in plan.slices])
            rows = _rows(preds, predictor.card.classes)
            for row, s in zip(rows, plan.slices, strict=True):
                row.series_uid = s.series_uid
    summary = summarize(rows, predictor.card, settings)
    print("\n| group | slices | OOD fraction | label (model output) | verdict | evidence |")
    print("|---|---|---|---|---|---|")
    for g in [summary, *summary["series"]]:
        name = "study" if g is summary else f"series {g['series_uid'][-6:]}"
        print(
            f"| {name} | {g['slices_predicted']} | {g['ood_fraction']:.0%} | {g['label']} | "
            f"**{g['verdict']}** | {g['verdict_text']} |"
        )
    print("\n" + json.dumps({"top_slices": [t["slice_index"] for t in summary["top_slices"]]}))


def main(data: Path) -> None:
    settings = get_settings()
    name = Registry(settings.models_dirs).cards()[0].name
    predictor = get_predictor(name, settings.models_dirs)
    studies = _pseudo_studies(data, predictor)
    table_pseudo(studies, predictor)
    table_sizes(studies, predictor)
    table_dicom(data, predictor, settings)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATA_DIR", "../shared/data")))
