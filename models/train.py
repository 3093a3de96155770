"""Train one architecture on a folder-per-class dataset and write a servable model folder.

    python -m models.train --arch cnn6 --data ../shared/data/iqoth-nccd \\
        --out models/store/lungct-cnn6 --name lungct-cnn6 --version 1.0.0

The output folder holds model.keras (no optimizer state), card.json (docs/architecture.md),
card.md, training_curves.png, confusion_matrix.png, and the out-of-distribution detector
(ood.npz) and temperature (in the card) with reliability.png, fitted by
models.uncertainty on the training/validation splits. Model selection (checkpoint, early
stopping, LR schedule) looks at the validation split only; the test split is scored once,
at the end, with the selected weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import cards
from models.data import Dataset, Split, grouped_split, load_arrays, scan_folder
from models.evaluate import classification_metrics, macro_f1, plot_confusion, plot_curves
from models.preprocessing import InputSpec
from models.studies import is_study_source, load_studies, study_split
from models.uncertainty import fit_uncertainty

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

ARCH_NAMES = (
    "lenet",
    "alexnet",
    "cnn6",
    "cnn6plain",
    "rescnn",
    "vgg16",
    "vgg19",
    "resnet50",
    "efficientnetb0",
)
THREE_CHANNEL = frozenset({"vgg16", "vgg19", "resnet50", "efficientnetb0"})
AUGMENTATION = {
    "rotation_deg": 10,
    "translate": 0.05,
    "zoom": 0.10,
    "horizontal_flip": True,
    "brightness": 0.10,
    "contrast": 0.15,
}
# Wider ranges plus pixel noise, for ``--augment strong``: other hospitals position, zoom
# and window differently, and scanners differ in noise.
STRONG_AUGMENTATION = {
    "rotation_deg": 15,
    "translate": 0.08,
    "zoom": 0.15,
    "horizontal_flip": True,
    "brightness": 0.15,
    "contrast": 0.25,
    "gaussian_noise_std": 0.02,
}
AUGMENTATIONS = {"standard": AUGMENTATION, "strong": STRONG_AUGMENTATION}


LR_SCHEDULES = {
    "cosine": "cosine decay to 5% of the initial rate over --epochs",
    "plateau": "ReduceLROnPlateau on val loss (x0.5)",
}


@dataclass
class Arrays:
    """Preprocessed tensors and integer labels of one split."""

    x: np.ndarray
    y: np.ndarray


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--help`` lists the architectures."""
    p = argparse.ArgumentParser(
        prog="python -m models.train",
        description="Train a lung-CT slice classifier with a grouped (patient-safe) split.",
        epilog=f"architectures: {', '.join(ARCH_NAMES)}",
    )
    add_training_options(p)
    args = p.parse_args(argv)
    if args.no_augment:
        args.augment = "none"
    return args


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The options shared by ``models.train`` and ``models.cv`` (same recipe in both)."""
    p.add_argument("--arch", required=True, choices=ARCH_NAMES, help="network builder")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder with one subfolder of images per class; or of study folders/zips per "
        "class; or a CSV of study path,label[,patient] (docs/models.md)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        help="fine-tune: start from this model folder's weights (same input size and classes)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--name", help="model name (default: the --out folder name)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=128, help="square input side in pixels")
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="input channels (default: 3 for ImageNet-style backbones, else 1)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=15, help="early-stopping patience (epochs)")
    p.add_argument(
        "--min-epochs",
        type=int,
        default=5,
        help="epochs before model selection starts (early epochs are unstable)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=("cosine", "plateau"),
        default="cosine",
        help="cosine decay over --epochs, or ReduceLROnPlateau on val loss",
    )
    p.add_argument("--block-size", type=int, default=16, help="slices per case-number block")
    p.add_argument("--dup-distance", type=int, default=4, help="pHash near-duplicate distance")
    p.add_argument("--severity", help="comma-separated classes, least to most severe")
    p.add_argument("--no-augment", action="store_true", help="same as --augment none")
    p.add_argument(
        "--augment",
        choices=("none", "standard", "strong"),
        default="standard",
        help="augmentation ranges (docs/models.md)",
    )
    p.add_argument("--no-class-weights", action="store_true", help="plain (unweighted) loss")
    p.add_argument(
        "--balanced-sampling",
        action="store_true",
        help="draw every class equally often per epoch (instead of class weights)",
    )
    p.add_argument(
        "--loss",
        choices=("ce", "focal"),
        default="ce",
        help="cross-entropy with label smoothing 0.05, or focal loss (gamma 2)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.98,
        help="weight EMA momentum used for validation and the saved model; 0 = off",
    )
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras progress")


def set_seeds(seed: int) -> None:
    """Seed Python, numpy and TensorFlow so a rerun on the same machine gives the same model."""
    import keras

    keras.utils.set_random_seed(seed)


def augmenter(strength: str = "standard") -> Any:
    """CT-appropriate augmentation, applied in the tf.data pipeline (not saved in the model).

    Small rotations/shifts/zoom mimic patient positioning and field-of-view differences;
    brightness/contrast jitter mimics window and reconstruction differences. Horizontal
    flip is allowed: the labels (normal/benign/malignant) do not depend on laterality and
    nodules occur in both lungs; vertical flips are not used (no scanner produces them).
    """
    from keras import layers

    a = AUGMENTATIONS[strength]
    out = [
        layers.RandomFlip("horizontal"),
        layers.RandomRotation(a["rotation_deg"] / 360.0, fill_mode="constant"),
        layers.RandomTranslation(a["translate"], a["translate"], fill_mode="constant"),
        layers.RandomZoom(a["zoom"], fill_mode="constant"),
        layers.RandomBrightness(a["brightness"], value_range=(0.0, 1.0)),
        layers.RandomContrast(a["contrast"]),
    ]
    if a.get("gaussian_noise_std"):
        out.append(layers.GaussianNoise(a["gaussian_noise_std"]))
    return out


def make_dataset(
    arrays: Arrays,
    num_classes: int,
    batch_size: int,
    seed: int,
    augment: bool | str,
    balanced: bool = False,
) -> Any:
    """tf.data pipeline: shuffle, batch, augment on the fly, clip to [0, 1], prefetch.

    ``augment``: False/"none", True/"standard" or "strong". ``balanced``: every batch draws
    the classes with equal probability (each class resampled with replacement); an epoch
    keeps the same number of steps as the plain pipeline.
    """
    import tensorflow as tf

    if balanced:
        per_class = []
        for k in range(num_classes):
            idx = np.flatnonzero(arrays.y == k)
            if len(idx) == 0:
                continue
            part = tf.data.Dataset.from_tensor_slices(
                (arrays.x[idx], tf.one_hot(arrays.y[idx], num_classes))
            )
            per_class.append(part.shuffle(len(idx), seed=seed + k).repeat())
        ds = tf.data.Dataset.sample_from_datasets(per_class, seed=seed).take(len(arrays.x))
        ds = ds.batch(batch_size)
    else:
        y = tf.one_hot(arrays.y, num_classes)
        ds = tf.data.Dataset.from_tensor_slices((arrays.x, y))
        ds = ds.shuffle(len(arrays.x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    strength = augment if isinstance(augment, str) else ("standard" if augment else "none")
    if strength != "none":
        aug_layers = augmenter(strength)

        def apply(x: Any, t: Any) -> tuple[Any, Any]:
            for layer in aug_layers:
                x = layer(x, training=True)
            return tf.clip_by_value(x, 0.0, 1.0), t

        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * n_c), so the 100-image benign class is not ignored."""
    counts = np.bincount(y, minlength=num_classes).astype(float)
    return {k: float(len(y) / (num_classes * max(c, 1.0))) for k, c in enumerate(counts)}


def augment_strength(args: argparse.Namespace) -> str:
    """``none``, ``standard`` or ``strong`` from the parsed options."""
    if getattr(args, "no_augment", False):
        return "none"
    return str(getattr(args, "augment", "standard"))


def make_loss(name: str) -> Any:
    """Cross-entropy with label smoothing 0.05, or focal loss (gamma 2, same smoothing)."""
    import keras

    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=2.0, label_smoothing=0.05)
    return keras.losses.CategoricalCrossentropy(label_smoothing=0.05)


def loss_description(args: argparse.Namespace) -> str:
    """The loss and class balancing, in words, for the card."""
    text = (
        "focal loss (gamma 2), label smoothing 0.05"
        if getattr(args, "loss", "ce") == "focal"
        else "categorical cross-entropy, label smoothing 0.05"
    )
    if getattr(args, "balanced_sampling", False):
        return text + ", class-balanced sampling"
    return text + ("" if args.no_class_weights else ", balanced class weights")


def selection_callback(val: Arrays, num_classes: int, min_epochs: int) -> Any:
    """Adds ``val_macro_f1`` and ``val_score`` (macro-F1, ties to lower loss) to the logs.

    Must run before the checkpoint/early-stopping callbacks that read ``val_score``. Before
    ``min_epochs`` the score is -1, so a lucky, barely trained early epoch (validation
    macro-F1 swings a lot with ~10 validation patients) cannot be selected.
    """
    import keras

    class ValMacroF1(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs if logs is not None else {}
            probs = self.model.predict(val.x, verbose=0, batch_size=64)
            logs["val_macro_f1"] = macro_f1(val.y, probs, num_classes)
            score = logs["val_macro_f1"] - 1e-3 * float(logs.get("val_loss", 0.0))
            logs["val_score"] = score if epoch + 1 >= min_epochs else -1.0

    return ValMacroF1()


def fit(
    args: argparse.Namespace, spec: InputSpec, data: dict[str, Arrays], num_classes: int, ckpt: Path
) -> tuple[Any, dict[str, list[float]], int, float]:
    """Build, compile and fit; returns (best model, history, best epoch, seconds).

    ``data["val"]`` drives checkpointing and early stopping; without it the model trains
    for exactly ``args.epochs`` epochs and the last (averaged) weights are returned.
    """
    import keras

    from models.architectures import build_model

    model = build_model(args.arch, spec.shape, num_classes)
    if getattr(args, "init_from", None):  # fine-tune: start from a trained model's weights
        start_from = keras.models.load_model(args.init_from / "model.keras", compile=False)
        if tuple(start_from.input_shape[1:]) != spec.shape or start_from.output_shape[-1] != (
            num_classes
        ):
            raise ValueError(
                f"--init-from {args.init_from}: input {start_from.input_shape[1:]} / "
                f"{start_from.output_shape[-1]} classes differ from {spec.shape} / {num_classes}"
            )
        model = start_from
    train_ds = make_dataset(
        data["train"],
        num_classes,
        args.batch_size,
        args.seed,
        augment_strength(args),
        balanced=getattr(args, "balanced_sampling", False),
    )
    steps = args.epochs * -(-len(data["train"].x) // args.batch_size)
    lr: Any = args.lr
    if args.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps, alpha=0.05)
    use_ema = args.ema > 0
    has_val = "val" in data
    model.compile(
        optimizer=keras.optimizers.Adam(lr, use_ema=use_ema, ema_momentum=args.ema or 0.99),
        loss=make_loss(getattr(args, "loss", "ce")),
        metrics=["accuracy"],
    )
    # EMA weights are swapped in at each epoch end: the validation score, the checkpoint and
    # the saved model all use the averaged weights, which swing far less between epochs.
    # Without a validation split (cross-validation folds) the run lasts exactly --epochs and
    # Keras copies the averaged weights into the model when fit() ends.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if use_ema and has_val else []
    callbacks += (
        []
        if not has_val
        else [
            selection_callback(data["val"], num_classes, min(args.min_epochs, args.epochs)),
            keras.callbacks.ModelCheckpoint(
                ckpt, monitor="val_score", mode="max", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=args.patience),
        ]
    )
    if args.lr_schedule == "plateau" and has_val:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(2, args.patience // 3), min_lr=1e-5
            )
        )
    val_ds = (
        make_dataset(data["val"], num_classes, 64, args.seed, augment=False) if has_val else None
    )
    start = time.perf_counter()
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=args.epochs,
        verbose=args.verbose,
        shuffle=False,
        class_weight=None
        if args.no_class_weights or getattr(args, "balanced_sampling", False)
        else class_weights(data["train"].y, num_classes),
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if not has_val:
        return model, history, len(history["loss"]), seconds
    best_epoch = int(np.argmax(history["val_score"])) + 1
    model.load_weights(ckpt)
    return model, history, best_epoch, seconds


def save_inference_model(model: Any, path: Path) -> None:
    """Save architecture + weights only, without optimizer state (keeps the file ~1.4 MB).

    A compiled model (and even its ``clone_model`` copy) was saved with Adam's moments and
    EMA copies, tripling the size; a model reloaded with ``compile=False`` has none.
    """
    import keras

    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    keras.models.load_model(tmp, compile=False).save(path)
    tmp.unlink()


def split_arrays(x: np.ndarray, dataset: Dataset, split: Split) -> dict[str, Arrays]:
    """Slice the preprocessed tensor into train/val/test by the split's indices."""
    return {s: Arrays(x[idx], dataset.labels[idx]) for s, idx in split.indices.items()}


def run(args: argparse.Namespace, settings: object) -> dict[str, Any]:
    """The whole training run; returns the card written to ``args.out``.

    ``settings``: the service's (``config.Settings``), for decoding labelled studies
    exactly as uploads are decoded.
    """
    import keras
    import tensorflow as tf

    set_seeds(args.seed)
    channels = args.channels or (3 if args.arch in THREE_CHANNEL else 1)
    spec = InputSpec(args.img_size, args.img_size, channels)
    if is_study_source(args.data):  # labelled DICOM/zip studies, decoded like uploads
        studies = load_studies(args.data, spec, settings)
        dataset, split = studies.dataset, study_split(studies, args.seed)
        print(f"{len(studies.studies)} studies, {len(dataset.paths)} slices", flush=True)
        x = studies.x
    else:
        dataset = scan_folder(args.data)
        print(f"{len(dataset.paths)} images, classes {dataset.classes}; grouping...", flush=True)
        split = grouped_split(
            dataset, seed=args.seed, block_size=args.block_size, dup_distance=args.dup_distance
        )
        x = load_arrays(dataset, spec)
    print(f"split: {split.audit['counts']}", flush=True)
    data = split_arrays(x, dataset, split)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "best.weights.h5"
    model, history, best_epoch, seconds = fit(args, spec, data, len(dataset.classes), ckpt)
    probs = {s: model.predict(data[s].x, verbose=0, batch_size=64) for s in ("val", "test")}
    metrics = {s: classification_metrics(data[s].y, probs[s], dataset.classes) for s in probs}
    save_inference_model(model, args.out / "model.keras")
    ckpt.unlink(missing_ok=True)
    training = {
        "arch": args.arch,
        "epochs_max": args.epochs,
        "epochs_run": len(history["loss"]),
        "best_epoch": best_epoch,
        "batch_size": args.batch_size,
        "optimizer": "Adam",
        "learning_rate": args.lr,
        "lr_schedule": LR_SCHEDULES[args.lr_schedule],
        "loss": loss_description(args),
        "weight_ema": args.ema or None,
        "early_stopping": f"val macro-F1 (ties: lower val loss), patience {args.patience}, "
        f"selection from epoch {min(args.min_epochs, args.epochs)}",
        "augmentation": AUGMENTATIONS.get(augment_strength(args)),
        "seed": args.seed,
        "params": int(model.count_params()),
        "train_seconds": round(seconds, 1),
        "history": history,
        "device": f"CPU ({os.cpu_count()} cores), no GPU"
        if not tf.config.list_physical_devices("GPU")
        else "GPU",
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "command": "python -m models.train " + shlex.join(sys.argv[1:]),
    }
    card = cards.build_card(args, spec, dataset, split, metrics, training)
    arrays = {s: (data[s].x, data[s].y) for s in ("train", "val", "test")}
    card |= fit_uncertainty(model, arrays, args.out, split.groups[split.indices["val"]])
    cards.write_card(card, args.out)
    plot_curves(history, args.out / "training_curves.png", best_epoch)
    plot_confusion(
        metrics["test"]["confusion_matrix"], dataset.classes, args.out / "confusion_matrix.png"
    )
    return card


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; prints the test-split summary at the end."""
    from config import get_settings

    args = parse_args(argv)
    card = run(args, get_settings())
    test = card["metrics"]["test"]
    print(
        f"saved {args.out}: test accuracy {test['accuracy']:.3f}, "
        f"macro-F1 {test['macro_f1']:.3f} ({card['metrics']['split']})"
    )


if __name__ == "__main__":
    main()
