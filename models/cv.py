"""Grouped K-fold cross-validation of one training recipe (model selection without the test split).

    python -m models.cv --arch cnn6 --data ../shared/data/iqoth-nccd --out var/cv/base \\
        --folds 4 --epochs 12 --img-size 128 --no-class-weights
    python -m models.cv table var/cv/base var/cv/other      # one table over finished runs
    python -m models.cv table var/cv/other --card models/store/NAME --append  # add to a card

The pool is the train + validation part of the grouped split that ``models.train`` makes
with the same seed; its test split is never read here, so choosing a recipe by these
scores leaves that test split untouched for the one final score. The pool's groups
(contiguous case-number blocks + pHash near-duplicates, ``models.data``) are dealt into
``--folds`` folds per class (:func:`models.data.grouped_kfold`). For fold ``f`` the model
trains on the other folds for exactly ``--epochs`` epochs (cosine decay to the end, weight
EMA; no early stopping, so nothing is chosen on the held-out fold) and fold ``f`` is scored.
The epoch count is part of the recipe being compared.

Reported per recipe: mean and standard deviation over folds of accuracy, macro-F1 and
per-class F1, the same metrics on the pooled out-of-fold predictions, and both with
test-time augmentation (average of the image and its horizontal mirror). Each fold's
model is kept in ``<out>/fold<f>/model.keras``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.data import grouped_kfold, grouped_split, load_arrays, scan_folder
from models.evaluate import classification_metrics
from models.preprocessing import InputSpec
from models.train import (
    THREE_CHANNEL,
    Arrays,
    add_training_options,
    augment_strength,
    fit,
    loss_description,
    save_inference_model,
    set_seeds,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The training options of ``models.train`` plus ``--folds`` and ``--skip-existing``."""
    p = argparse.ArgumentParser(
        prog="python -m models.cv", description=(__doc__ or "").splitlines()[0]
    )
    add_training_options(p)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--skip-existing", action="store_true", help="reuse finished folds")
    p.add_argument(
        "--fold-seed",
        type=int,
        help="deal the folds with this seed (default --seed); the train/val/test split keeps "
        "--seed, so repeated cross-validation never reaches into the test split",
    )
    p.add_argument(
        "--members",
        type=int,
        default=1,
        help="models per fold with different seeds, scored as one ensemble (mean probabilities)",
    )
    p.add_argument(
        "--only-folds",
        type=int,
        nargs="+",
        help="train/score only these folds (a partial run; the report names them)",
    )
    args = p.parse_args(argv)
    if args.no_augment:
        args.augment = "none"
    return args


def tta_predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Mean probabilities of each image and its horizontal mirror (test-time augmentation)."""
    plain = model.predict(x, verbose=0, batch_size=64)
    mirrored = model.predict(x[:, :, ::-1, :], verbose=0, batch_size=64)
    return (plain + mirrored) / 2.0


def fold_indices(folds: np.ndarray, f: int) -> dict[str, np.ndarray]:
    """Positions (into the pool) of the training folds and the held-out fold ``f``."""
    return {"train": np.flatnonzero(folds != f), "held": np.flatnonzero(folds == f)}


def summarize(
    y: np.ndarray, folds: np.ndarray, probs: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Per-fold and pooled metrics; mean and standard deviation over folds."""
    per_fold = [
        classification_metrics(y[folds == f], probs[folds == f], classes) for f in np.unique(folds)
    ]

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}

    per_class: dict[str, dict[str, float]] = {}
    for c in classes:
        # a fold without any image of class c has no F1 for it: leave that fold out
        scores = [m["per_class"][c]["f1"] for m in per_fold if m["per_class"][c]["support"]]
        per_class[c] = spread(scores) | {"folds": len(scores)}
    return {
        "folds": len(per_fold),
        "accuracy": spread([m["accuracy"] for m in per_fold]),
        "macro_f1": spread([m["macro_f1"] for m in per_fold]),
        "f1_per_class": per_class,
        "pooled": classification_metrics(y, probs, classes),
        "per_fold": per_fold,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and score every fold; writes ``cv.json`` and ``cv.md`` into ``args.out``."""

    set_seeds(args.seed)
    channels = args.channels or (3 if args.arch in THREE_CHANNEL else 1)
    spec = InputSpec(args.img_size, args.img_size, channels)
    dataset = scan_folder(args.data)
    split = grouped_split(
        dataset, seed=args.seed, block_size=args.block_size, dup_distance=args.dup_distance
    )
    pool = np.sort(np.concatenate([split.indices["train"], split.indices["val"]]))
    y = dataset.labels[pool]
    fold_seed = args.seed if args.fold_seed is None else args.fold_seed
    folds = grouped_kfold(y, split.groups[pool], args.folds, fold_seed)
    print(f"pool {len(pool)} images (test split left out); folds {np.bincount(folds)}", flush=True)
    x = load_arrays(dataset, spec)[pool]
    num_classes = len(dataset.classes)
    probs = np.zeros((len(pool), num_classes), np.float32)
    probs_tta = np.zeros_like(probs)
    fold_info = []
    scored = sorted(set(args.only_folds)) if args.only_folds else list(range(args.folds))
    for f in scored:
        idx = fold_indices(folds, f)
        members = [
            _fold_member(
                args,
                spec,
                (x, y, num_classes),
                idx,
                _member_dir(args.out, f, k),
                args.seed + f + 1000 * k,
            )
            for k in range(args.members)
        ]
        probs[idx["held"]] = np.mean([m["probs"] for m in members], axis=0)
        probs_tta[idx["held"]] = np.mean([m["probs_tta"] for m in members], axis=0)
        fold_info.append(
            {
                "held_out": len(idx["held"]),
                "held_out_per_class": np.bincount(y[idx["held"]], minlength=num_classes).tolist(),
                "members": len(members),
                "best_epoch": [m["best_epoch"] for m in members],
                "epochs_run": [m["epochs_run"] for m in members],
                "train_seconds": [m["train_seconds"] for m in members],
            }
        )
    keep = np.isin(folds, scored)
    suffix = "" if len(scored) == args.folds else "_folds" + "-".join(map(str, scored))
    if args.members > 1:
        suffix += f"_ensemble{args.members}"
    np.savez(
        args.out / f"oof{suffix}.npz",
        pool=pool[keep],
        y=y[keep],
        folds=folds[keep],
        probs=probs[keep],
        probs_tta=probs_tta[keep],
    )
    y, folds, probs, probs_tta = y[keep], folds[keep], probs[keep], probs_tta[keep]
    report = {
        "recipe": recipe(args, spec),
        "command": "python -m models.cv " + shlex.join(sys.argv[1:]),
        "classes": list(dataset.classes),
        "pool": "train + val of the grouped split (test split never read)",
        "split_method": split.method,
        "fold_method": f"{args.folds} grouped folds over the pool's groups, stratified per "
        f"class by image count; each fold model trains {args.epochs} epochs on the other "
        f"folds (no early stopping); seed {args.seed}, folds dealt with seed {fold_seed}",
        "fold_info": fold_info,
        "folds_scored": scored,
        "plain": summarize(y, folds, probs, list(dataset.classes)),
        "tta": summarize(y, folds, probs_tta, list(dataset.classes)),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    (args.out / f"cv{suffix}.json").write_text(json.dumps(report, indent=1) + "\n", "utf-8")
    (args.out / f"cv{suffix}.md").write_text(render_table([report]), encoding="utf-8")
    return report


def _member_dir(out: Path, fold: int, member: int) -> Path:
    """Member 0 is the plain run's fold folder, so ``--members 1`` reuses it."""
    return out / f"fold{fold}" if member == 0 else out / f"fold{fold}" / f"member{member}"


def _fold_member(
    args: argparse.Namespace,
    spec: InputSpec,
    pool: tuple[np.ndarray, np.ndarray, int],
    idx: dict[str, np.ndarray],
    out: Path,
    seed: int,
) -> dict[str, Any]:
    """Train one model on the training folds (or reuse it) and score the held-out fold.

    ``pool``: the pool's images, labels and the number of classes.
    """
    import keras

    x, y, num_classes = pool

    out.mkdir(parents=True, exist_ok=True)
    result = out / "result.npz"
    if not (args.skip_existing and result.is_file()):
        keras.backend.clear_session()
        set_seeds(seed)
        data = {"train": Arrays(x[idx["train"]], y[idx["train"]])}
        print(f"== {out}: train {len(idx['train'])}, held out {len(idx['held'])}", flush=True)
        model, history, best_epoch, seconds = fit(
            args, spec, data, num_classes, out / "best.weights.h5"
        )
        held_x = x[idx["held"]]
        np.savez(
            result,
            held=idx["held"],
            probs=model.predict(held_x, verbose=0, batch_size=64),
            probs_tta=tta_predict(model, held_x),
            best_epoch=best_epoch,
            epochs_run=len(history["loss"]),
            seconds=seconds,
        )
        save_inference_model(model, out / "model.keras")
        (out / "best.weights.h5").unlink(missing_ok=True)
    saved = np.load(result)
    if not np.array_equal(saved["held"], idx["held"]):
        raise RuntimeError(f"{result} was made with other folds; rerun without --skip-existing")
    return {
        "probs": saved["probs"],
        "probs_tta": saved["probs_tta"],
        "best_epoch": int(saved["best_epoch"]),
        "epochs_run": int(saved["epochs_run"]),
        "train_seconds": round(float(saved["seconds"]), 1),
    }


def recipe(args: argparse.Namespace, spec: InputSpec) -> str:
    """The training recipe in a few words (a table row label)."""
    text = (
        f"{args.arch} {spec.height}px, {loss_description(args)}, "
        f"augment {augment_strength(args)}, lr {args.lr}, {args.epochs} epochs"
    )
    if args.members > 1:
        text = f"mean of {args.members} models per fold (seeds differ), each " + text
    if args.fold_seed is not None:
        text += f", folds dealt with seed {args.fold_seed}"
    if args.only_folds and len(set(args.only_folds)) != args.folds:
        text += f" (folds {', '.join(map(str, sorted(set(args.only_folds))))} of {args.folds} only)"
    return text


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def render_table(reports: list[dict[str, Any]]) -> str:
    """Markdown: one row per recipe and mode (plain, TTA), mean ± sd over folds and pooled."""
    classes = reports[0]["classes"]
    head = (
        "| recipe | TTA | macro-F1 (folds) | "
        + " | ".join(f"{c} F1 (folds)" for c in classes)
        + " | accuracy (folds) | pooled macro-F1 | "
        + " | ".join(f"pooled {c} F1" for c in classes)
        + " |"
    )
    rows = [head, "|" + "---|" * (5 + 2 * len(classes))]
    for r in reports:
        for mode in ("plain", "tta"):
            s = r[mode]
            pooled = s["pooled"]
            rows.append(
                f"| {r['recipe']} | {'yes' if mode == 'tta' else 'no'} | {_pm(s['macro_f1'])} | "
                + " | ".join(_pm(s["f1_per_class"][c]) for c in classes)
                + f" | {_pm(s['accuracy'])} | {pooled['macro_f1']:.3f} | "
                + " | ".join(f"{pooled['per_class'][c]['f1']:.3f}" for c in classes)
                + " |"
            )
    return "\n".join(rows) + "\n"


def attach_to_card(
    reports: list[dict[str, Any]], model_dir: Path, note: str = "", append: bool = False
) -> None:
    """Record the cross-validation table (and each recipe's summary) in a model card.

    ``append`` keeps the runs already recorded there and adds these after them
    (their table rows, commands and note), so the card keeps every run made.
    """
    from models import cards

    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    earlier = card.get("cv") if append else None

    def brief(s: dict[str, Any]) -> dict[str, Any]:
        pooled = s["pooled"]
        return {
            "macro_f1": s["macro_f1"],
            "accuracy": s["accuracy"],
            "f1_per_class": s["f1_per_class"],
            "pooled_macro_f1": pooled["macro_f1"],
            "pooled_f1": {c: m["f1"] for c, m in pooled["per_class"].items()},
            "pooled_confusion_matrix": pooled["confusion_matrix"],
        }

    runs = [
        {"recipe": r["recipe"], "plain": brief(r["plain"]), "tta": brief(r["tta"])} for r in reports
    ]
    command = " ; ".join(r["command"] for r in reports)
    if earlier:
        new_rows = render_table(reports).splitlines(keepends=True)[2:]  # without the header
        card["cv"] = {
            "method": earlier["method"].rstrip(". ") + (f". {note.rstrip('. ')}" if note else ""),
            "command": f"{earlier['command']} ; {command}",
            "table": earlier["table"] + "".join(new_rows),
            "runs": earlier["runs"] + runs,
        }
    else:
        card["cv"] = {
            "method": f"{reports[0]['fold_method']}; pool: {reports[0]['pool']}; mean ± sd "
            "over folds, and pooled out-of-fold predictions"
            + (f". {note.rstrip('. ')}" if note else ""),
            "command": command,
            "table": render_table(reports),
            "runs": runs,
        }
    cards.write_card(card, model_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m models.cv [training options]``, or
    ``python -m models.cv table DIR... [--card MODEL_DIR [--note TEXT]]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        p = argparse.ArgumentParser(prog="python -m models.cv table")
        p.add_argument(
            "runs", nargs="+", type=Path, help="models.cv output folders (cv.json) or report files"
        )
        p.add_argument("--card", type=Path, help="also record the table in this model's card")
        p.add_argument("--note", default="", help="a sentence added to the card's method")
        p.add_argument(
            "--append", action="store_true", help="keep the runs already in the card, add these"
        )
        targs = p.parse_args(argv[1:])
        reports = [
            json.loads((d / "cv.json" if d.is_dir() else d).read_text(encoding="utf-8"))
            for d in targs.runs
        ]
        if targs.card:
            attach_to_card(reports, targs.card, targs.note, targs.append)
        print(render_table(reports), end="")
        return
    report = run(parse_args(argv))
    print(render_table([report]), end="")


if __name__ == "__main__":
    main()
