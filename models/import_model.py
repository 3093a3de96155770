"""Bring your own model: validate a Keras file, write its card, register it.

    python -m models.import MODEL.keras --name my-model --classes benign,malignant,normal \\
        [--severity normal,benign,malignant] [--input 224x224x3] [--version 1.0.0] \\
        [--metrics metrics.json] [--dest var/models] [--force]

(``models/import.py`` only calls :func:`main`; ``import`` is a Python keyword, so the code
lives here.) Checks, in order: the file loads with Keras (``compile=False``); it has one
image input ``(batch, H, W, C)`` with C = 1 or 3 (``--input`` is required when H/W are not
fixed, and must agree when they are); one output whose width equals the number of
classes; a smoke prediction on two slices gives finite probabilities (each row in [0, 1],
summing to 1: end the model with a softmax). The service feeds what it feeds its own
models: the display image resized bilinearly to H x W, scaled to [0, 1], gray repeated to
3 channels when C = 3 (models/preprocessing.py).

The model folder ``<dest>/<name>/`` gets ``model.keras`` (a copy) and a card marked
"imported, not evaluated here" unless ``--metrics`` gives figures (a JSON object with
e.g. ``accuracy``, ``macro_f1``, ``split``: they are recorded as provided, not checked).
``<dest>`` defaults to the last folder of ``MODELS_DIRS`` (``var/models``), which the
registry rescans on every request: the API lists the model and jobs can choose it with
``model=<name>`` without a restart. Imported models have no out-of-distribution detector
or temperature (nothing to fit them on), so their results carry ``ood_score: null``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.cards import INTENDED_USE, severity_order
from models.preprocessing import InputSpec
from models.registry import CARD_FILE, ModelCard, Registry

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NOT_EVALUATED = "imported, not evaluated here"


class ImportRefused(Exception):
    """The file or the options fail a check; the message says which and why."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models.import", description="Validate and register an outside model."
    )
    p.add_argument("model", type=Path, help="a .keras (or legacy .h5) Keras model file")
    p.add_argument("--name", required=True, help="registry name: lowercase, digits, . _ -")
    p.add_argument("--classes", required=True, help="comma-separated, in output order")
    p.add_argument("--severity", help="classes from least to most severe (default: guessed)")
    p.add_argument("--input", help="HxWxC, required when the model's input size is not fixed")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--metrics", type=Path, help="JSON object of metrics measured elsewhere")
    p.add_argument("--dest", type=Path, help="models folder (default: last of MODELS_DIRS)")
    p.add_argument("--force", action="store_true", help="replace a model of the same name")
    return p.parse_args(argv)


def parse_input(text: str) -> InputSpec:
    """``224x224x3`` -> InputSpec(224, 224, 3)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ImportRefused(f"--input must look like 128x128x1, got {text!r}")
    try:
        return InputSpec(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError as exc:
        raise ImportRefused(f"--input: {exc}") from None


def input_spec(model: Any, given: InputSpec | None) -> InputSpec:
    """The input size from the model, checked against ``--input``."""
    if len(model.inputs) != 1:
        raise ImportRefused(f"the model has {len(model.inputs)} inputs; one image input needed")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ImportRefused(f"input shape {shape} is not (batch, height, width, channels)")
    _, h, w, c = shape
    if c not in (1, 3):
        raise ImportRefused(f"input has {c} channels; 1 (gray) or 3 are supported")
    if given is not None:
        mismatch = [
            f"{name} {have} vs --input {want}"
            for name, have, want in (("height", h, given.height), ("width", w, given.width))
            if have is not None and have != want
        ]
        if mismatch or given.channels != c:
            mismatch += [] if given.channels == c else [f"channels {c} vs --input {given.channels}"]
            raise ImportRefused("input shape differs from --input: " + ", ".join(mismatch))
        return given
    if h is None or w is None:
        raise ImportRefused(f"input size {shape[1:]} is not fixed; pass --input HxWxC")
    return InputSpec(int(h), int(w), int(c))


def smoke_test(model: Any, spec: InputSpec, classes: list[str]) -> np.ndarray:
    """Predict two slices (black, and a mid-gray noise image); check the probabilities."""
    if len(model.outputs) != 1:
        raise ImportRefused(f"the model has {len(model.outputs)} outputs; one is needed")
    width = model.outputs[0].shape[-1]
    if width != len(classes):
        raise ImportRefused(f"the output has {width} values but --classes lists {len(classes)}")
    rng = np.random.default_rng(0)
    x = np.stack([np.zeros(spec.shape), rng.uniform(0, 1, spec.shape)]).astype(np.float32)
    try:
        out = np.asarray(model.predict(x, verbose=0))
    except Exception as exc:  # any failure of a foreign model's forward pass
        raise ImportRefused(f"smoke prediction failed: {type(exc).__name__}: {exc}") from None
    if out.shape != (2, len(classes)) or not np.all(np.isfinite(out)):
        raise ImportRefused(f"smoke prediction gave shape {out.shape} or non-finite values")
    if out.min() < -1e-4 or out.max() > 1 + 1e-4 or not np.allclose(out.sum(axis=1), 1, atol=1e-3):
        raise ImportRefused(
            "outputs are not probabilities (each row must be in [0, 1] and sum to 1): "
            "end the model with a softmax layer"
        )
    return out


def build_card(args: argparse.Namespace, spec: InputSpec, model: Any, digest: str) -> dict:
    """The card.json of an imported model (same schema, evaluated-here flag false)."""
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    metrics: dict[str, Any] = {"split": NOT_EVALUATED, "test": {}}
    if args.metrics:
        given = json.loads(args.metrics.read_text(encoding="utf-8"))
        if not isinstance(given, dict):
            raise ImportRefused("--metrics must hold a JSON object")
        metrics = {"split": given.get("split", "provided by the importer, not checked here")}
        metrics["test"] = {k: v for k, v in given.items() if k != "split"}
    return {
        "name": args.name,
        "version": args.version,
        "architecture": "imported",
        "classes": classes,
        "input": spec.to_dict(),
        "preprocessing": {
            "resize": "bilinear",
            "scale": "x/255",
            "function": "models.preprocessing.preprocess",
        },
        "severity": severity_order(classes, args.severity),
        "file": "model.keras",
        "metrics": metrics,
        "imported": {
            "evaluated_here": False,
            "metrics_source": "importer (--metrics)" if args.metrics else None,
            "source_file": args.model.name,
            "sha256": digest,
            "params": int(model.count_params()),
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m models.import " + " ".join(sys.argv[1:]),
        },
        "intended_use": INTENDED_USE,
        "limitations": [
            "Imported model: not trained or evaluated by this project; its metrics, if any, "
            "are the importer's.",
            "No out-of-distribution detector and no calibration were fitted for it.",
            "Not a medical device; research use only, not for clinical diagnosis.",
        ],
    }


def render_markdown(card: dict[str, Any]) -> str:
    """card.md of an imported model."""
    imp, test = card["imported"], card["metrics"]["test"]
    shown = ", ".join(f"{k} {v}" for k, v in test.items() if not isinstance(v, dict | list))
    return "\n".join(
        [
            f"# Model card: {card['name']} {card['version']} ({NOT_EVALUATED})",
            "",
            f"**Intended use:** {card['intended_use']}.",
            "",
            f"- Imported from `{imp['source_file']}` (sha256 `{imp['sha256'][:16]}...`, "
            f"{imp['params']:,} parameters) on {imp['imported_at']}.",
            f"- Input {card['input']['height']}x{card['input']['width']}x"
            f"{card['input']['channels']}; the service feeds gray slices resized bilinearly, "
            "scaled to [0, 1].",
            f"- Classes (output order): {', '.join(card['classes'])}; severity (least to "
            f"most): {', '.join(card['severity'])}.",
            f"- Metrics: {shown or 'none'} ({card['metrics']['split']}).",
            "",
            "## Limitations",
            "",
            *[f"- {item}" for item in card["limitations"]],
            "",
        ]
    )


def import_model(args: argparse.Namespace, models_dirs: Sequence[Path]) -> Path:
    """Run every check, then write ``<dest>/<name>/`` and return it.

    ``models_dirs``: the service's ``MODELS_DIRS``; the default destination is the
    last, and a name already served from any of them is refused without ``--force``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if not NAME.match(args.name):
        raise ImportRefused(f"--name {args.name!r}: use 1-64 lowercase letters, digits, . _ -")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ImportRefused(f"--classes needs two or more distinct names, got {classes}")
    if args.severity:
        try:
            severity_order(classes, args.severity)
        except ValueError as exc:
            raise ImportRefused(str(exc)) from None
    if not args.model.is_file() or args.model.suffix.lower() not in (".keras", ".h5"):
        raise ImportRefused(f"{args.model} is not a .keras or .h5 file")
    dest = args.dest or models_dirs[-1]
    existing = {c.name: c.path for c in Registry([*models_dirs, dest]).cards()}
    if args.name in existing and not args.force:
        raise ImportRefused(f"a model named {args.name!r} exists ({existing[args.name]}); --force")
    try:
        model = keras.models.load_model(args.model, compile=False)
    except Exception as exc:  # a foreign file can fail to load in many ways
        raise ImportRefused(
            f"Keras cannot load {args.model}: {type(exc).__name__}: {exc}"
        ) from None
    spec = input_spec(model, parse_input(args.input) if args.input else None)
    smoke_test(model, spec, classes)
    digest = hashlib.sha256(args.model.read_bytes()).hexdigest()
    card = build_card(args, spec, model, digest)
    out = dest / args.name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.model, out / "model.keras")
    (out / "card.md").write_text(render_markdown(card), encoding="utf-8")
    (out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    ModelCard.load(out)  # what the registry will read
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: exit 2 with the reason when a check fails."""
    from config import get_settings

    args = parse_args(argv)
    try:
        out = import_model(args, get_settings().models_dirs)
    except ImportRefused as exc:
        print(f"not imported: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    note = "metrics as given" if args.metrics else NOT_EVALUATED
    print(f"imported {args.name} into {out} ({note})")
