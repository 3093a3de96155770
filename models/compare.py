"""Train several architectures on the same grouped split with the same budget and tabulate.

    python -m models.compare --data ../shared/data/iqoth-nccd --out var/compare \\
        --archs lenet alexnet rescnn cnn6 --epochs 25 --img-size 128 --patience 8

Each architecture is trained by ``models.train`` in its own subprocess (a clean TensorFlow
state and a fair timing each), with the same seed, hence the same split, epochs, image
size, batch size, augmentation and early stopping. The markdown table goes to
``<out>/comparison.md`` and to stdout, ready for docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.train import ARCH_NAMES

DEFAULT_ARCHS = ("lenet", "alexnet", "rescnn", "cnn6")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m models.compare", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("var/compare"))
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=ARCH_NAMES)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        choices=(1, 3),
        help="same for every architecture, so inputs are identical",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--min-epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-class-weights", action="store_true", help="as in models.train")
    p.add_argument("--skip-existing", action="store_true", help="reuse finished runs")
    return p.parse_args(argv)


def train_one(arch: str, args: argparse.Namespace) -> Path:
    """Run ``models.train`` for one architecture; returns its output folder."""
    out = args.out / arch
    if args.skip_existing and (out / "card.json").is_file():
        return out
    cmd = [
        sys.executable,
        "-m",
        "models.train",
        "--arch",
        arch,
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--name",
        f"compare-{arch}",
        "--epochs",
        str(args.epochs),
        "--img-size",
        str(args.img_size),
        "--channels",
        str(args.channels),
        "--batch-size",
        str(args.batch_size),
        "--patience",
        str(args.patience),
        "--min-epochs",
        str(args.min_epochs),
        "--seed",
        str(args.seed),
        "--lr",
        str(args.lr),
        "--verbose",
        "2",
    ] + (["--no-class-weights"] if args.no_class_weights else [])
    print(f"== {arch}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
    return out


def table_row(card: dict[str, Any]) -> str:
    """One markdown row from a finished run's card.json."""
    t, tr = card["metrics"]["test"], card["training"]
    val_f1 = card["metrics"]["val"]["macro_f1"]
    auc = t["roc_auc_ovr"].get("macro")
    return (
        f"| {card['architecture']} | {tr['params']:,} | {t['accuracy']:.3f} | {t['macro_f1']:.3f} "
        f"| {'n/a' if auc is None else f'{auc:.3f}'} | {val_f1:.3f} | {tr['train_seconds']:.0f} "
        f"| {tr['epochs_run']} | {tr['best_epoch']} |"
    )


def render_table(cards: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The comparison table with the budget and hardware it was produced under."""
    device = cards[0]["training"]["device"] if cards else "unknown"
    header = [
        f"Same grouped split (seed {args.seed}), {args.img_size}x{args.img_size}x{args.channels} "
        f"input, max {args.epochs} epochs, early-stopping patience {args.patience} (selection "
        f"from epoch {args.min_epochs} on validation macro-F1), batch {args.batch_size}, Adam "
        f"lr {args.lr} with cosine decay, weight EMA 0.98, same augmentation, "
        f"{'no class weights' if args.no_class_weights else 'balanced class weights'}. "
        f"Hardware: {device}.",
        "",
        "| architecture | params | test accuracy | test macro-F1 | test macro AUC (OvR) "
        "| val macro-F1 | train time (s) | epochs run | epochs to best val |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + [table_row(c) for c in cards]) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Train every architecture in turn, then write and print the table."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cards = []
    for arch in args.archs:
        out = train_one(arch, args)
        cards.append(json.loads((out / "card.json").read_text(encoding="utf-8")))
    table = render_table(cards, args)
    (args.out / "comparison.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
