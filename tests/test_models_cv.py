"""Grouped K-fold cross-validation and the extra training options it compares."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from models.data import grouped_kfold

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_grouped_kfold_keeps_groups_whole_and_balances_classes() -> None:
    labels = np.repeat([0, 1, 2], [40, 80, 60])
    sizes = ((0, 40), (100, 80), (200, 60))
    groups = np.concatenate([np.repeat(np.arange(k, k + n // 5), 5) for k, n in sizes])
    folds = grouped_kfold(labels, groups, k=4, seed=1)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    for g in np.unique(groups):
        assert len(set(folds[groups == g].tolist())) == 1
    for c, n in ((0, 40), (1, 80), (2, 60)):
        counts = np.bincount(folds[labels == c], minlength=4)
        assert counts.sum() == n and counts.max() - counts.min() <= 5
    assert np.array_equal(folds, grouped_kfold(labels, groups, k=4, seed=1))
    with pytest.raises(ValueError):
        grouped_kfold(labels, groups, k=1)


def test_balanced_sampling_draws_classes_equally() -> None:
    pytest.importorskip("keras")
    from models.train import Arrays, make_dataset

    y = np.array([0] * 90 + [1] * 10)
    x = np.zeros((100, 4, 4, 1), np.float32)
    ds = make_dataset(Arrays(x, y), 2, 50, seed=0, augment="none", balanced=True)
    seen = np.concatenate([np.argmax(t.numpy(), axis=1) for _, t in ds])
    assert len(seen) == 100 and 35 <= (seen == 1).sum() <= 65
    strong = make_dataset(Arrays(x + 0.5, y), 2, 50, seed=0, augment="strong")
    batch = next(iter(strong))[0].numpy()
    assert batch.min() >= 0.0 and batch.max() <= 1.0 and batch.std() > 0  # noise was added


def test_cv_cli_writes_fold_models_and_a_table(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from models.cv import main, render_table
    from tests.test_models_data import make_dataset

    data = tmp_path / "data"
    make_dataset(data, {"normal": [4] * 6, "benign": [4] * 6, "malignant": [4] * 6}, size=40)
    out = tmp_path / "cv"
    args = ["--arch", "lenet", "--data", str(data), "--out", str(out), "--folds", "3"]
    args += ["--epochs", "1", "--img-size", "16", "--batch-size", "8", "--block-size", "4"]
    main([*args, "--verbose", "0", "--loss", "focal", "--balanced-sampling"])
    report = json.loads((out / "cv.json").read_text(encoding="utf-8"))
    assert report["plain"]["folds"] == 3 and len(report["fold_info"]) == 3
    assert set(report["plain"]["f1_per_class"]) == {"benign", "malignant", "normal"}
    assert {"mean", "std"} <= set(report["tta"]["macro_f1"])
    assert "test split never read" in report["pool"]
    assert all((out / f"fold{f}" / "model.keras").is_file() for f in range(3))
    oof = np.load(out / "oof.npz")
    assert len(oof["pool"]) == sum(fi["held_out"] for fi in report["fold_info"])
    assert "focal" in render_table([report]) and " ± " in render_table([report])
    main([*args, "--verbose", "0", "--skip-existing"])  # reuses the three finished folds
    main([*args, "--verbose", "0", "--skip-existing", "--only-folds", "0", "2"])
    part = json.loads((out / "cv_folds0-2.json").read_text(encoding="utf-8"))
    assert part["folds_scored"] == [0, 2] and part["plain"]["folds"] == 2
    assert part["recipe"].endswith("(folds 0, 2 of 3 only)")
    main([*args, "--verbose", "0", "--skip-existing", "--members", "2"])  # one new model per fold
    ens = json.loads((out / "cv_ensemble2.json").read_text(encoding="utf-8"))
    assert all(fi["members"] == 2 for fi in ens["fold_info"])
    assert ens["recipe"].startswith("mean of 2 models per fold")
    single = np.load(out / "fold0" / "result.npz")["probs"]
    second = np.load(out / "fold0" / "member1" / "result.npz")["probs"]
    held = np.load(out / "fold0" / "result.npz")["held"]  # positions in the pool's order
    ensemble = np.load(out / "oof_ensemble2.npz")["probs"][held]
    assert np.allclose(ensemble, (single + second) / 2, atol=1e-6)
    _attach_to_a_card(tmp_path, out)
    again = tmp_path / "cv-again"  # repeated CV: other folds, the very same pool (test untouched)
    main([*args[:5], str(again), *args[6:], "--verbose", "0", "--fold-seed", "5"])
    repeat = json.loads((again / "cv.json").read_text(encoding="utf-8"))
    assert repeat["recipe"].endswith("folds dealt with seed 5")
    assert np.array_equal(np.load(again / "oof.npz")["pool"], oof["pool"])


def _attach_to_a_card(tmp_path: Path, run: Path) -> None:
    """``table RUN --card DIR`` writes the table into an existing card.json and card.md."""
    from models.cv import main

    shipped = Path(__file__).resolve().parent.parent / "models" / "store" / "lungct-cnn6"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "card.json").write_bytes((shipped / "card.json").read_bytes())
    main(["table", str(run), "--card", str(model_dir), "--note", "a note"])
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    assert card["cv"]["method"].endswith("a note") and len(card["cv"]["runs"]) == 1
    assert "## Grouped cross-validation" in (model_dir / "card.md").read_text(encoding="utf-8")
    main(["table", str(run / "cv_ensemble2.json"), "--card", str(model_dir), "--append"])
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    assert len(card["cv"]["runs"]) == 2 and card["cv"]["runs"][1]["recipe"].startswith("mean of 2")
    rows = [r for r in card["cv"]["table"].splitlines() if r.startswith("| ")]
    assert len(rows) == 1 + 2 * 2  # one header, plain and TTA rows per run
