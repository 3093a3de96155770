"""python -m models.import: checks on an outside Keras model, its card, the registry."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from models.import_model import NOT_EVALUATED, main  # noqa: E402
from models.registry import Registry  # noqa: E402
from tests.conftest import png_bytes  # noqa: E402
from worker.inference import Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _save(path: Path, shape: tuple, outputs: int = 3, softmax: bool = True) -> Path:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(outputs, activation="softmax" if softmax else None),
        ]
    )
    model.save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("outside")
    return {
        "ok": _save(d / "ok.keras", (48, 40, 3)),
        "free": _save(d / "free.keras", (None, None, 1)),
        "logits": _save(d / "logits.keras", (32, 32, 1), softmax=False),
        "four": _save(d / "four.keras", (32, 32, 1), outputs=4),
    }


def _run(model: Path, dest: Path, *extra: str) -> None:
    args = [str(model), "--name", "outside", "--classes", "benign,malignant,normal"]
    main([*args, "--dest", str(dest), *extra])


def test_import_writes_a_card_the_registry_and_worker_use(
    files: dict[str, Path], tmp_path: Path
) -> None:
    _run(files["ok"], tmp_path)
    card = Registry([tmp_path]).get("outside")
    assert card.input.shape == (48, 40, 3) and card.severity == ["normal", "benign", "malignant"]
    assert (
        card.metrics["split"] == NOT_EVALUATED and card.raw["imported"]["evaluated_here"] is False
    )
    assert card.to_public()["metrics"]["accuracy"] is None
    assert NOT_EVALUATED in (tmp_path / "outside" / "card.md").read_text()
    result = Predictor.load(card).predict(np.zeros((2, 48, 40, 3), np.float32))
    assert result.probabilities.shape == (2, 3) and result.ood_score is None


def test_metrics_and_input_size_for_a_size_free_model(
    files: dict[str, Path], tmp_path: Path
) -> None:
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"accuracy": 0.8, "macro_f1": 0.7, "split": "site test set"}))
    _run(files["free"], tmp_path, "--input", "64x64x1", "--metrics", str(metrics))
    card = Registry([tmp_path]).get("outside")
    assert card.input.shape == (64, 64, 1)
    assert card.to_public()["metrics"] == {
        "accuracy": 0.8,
        "macro_f1": 0.7,
        "split": "site test set",
    }


@pytest.mark.parametrize(
    ("which", "extra", "message"),
    [
        ("free", (), "pass --input"),
        ("ok", ("--input", "48x40x1"), "channels 3 vs --input 1"),
        ("logits", (), "not probabilities"),
        ("four", (), "4 values but --classes lists 3"),
        ("ok", ("--severity", "normal,benign"), "must list exactly"),
    ],
)
def test_bad_models_are_refused_with_a_reason(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    which: str,
    extra: tuple[str, ...],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(files[which], tmp_path, *extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "outside").exists()


def test_name_clash_needs_force(files: dict[str, Path], tmp_path: Path) -> None:
    _run(files["ok"], tmp_path)
    with pytest.raises(SystemExit):
        _run(files["ok"], tmp_path)
    _run(files["ok"], tmp_path, "--force", "--version", "2.0.0")
    assert Registry([tmp_path]).get("outside").version == "2.0.0"


def test_runs_as_python_dash_m(files: dict[str, Path], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "models.import", str(files["ok"]), "--name", "cli-model"]
    cmd += ["--classes", "a,b,c", "--dest", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "imported cli-model" in done.stdout
    assert Registry([tmp_path]).get("cli-model").classes == ["a", "b", "c"]


def test_api_lists_an_imported_model_and_accepts_jobs_for_it_without_restart(
    client,
    api_env,
    files: dict[str, Path],  # type: ignore[no-untyped-def]
) -> None:
    dest = Path(api_env["MODELS_DIRS"].split(os.pathsep)[-1])
    assert "outside-api" not in [m["name"] for m in client.get("/api/v1/models").json["items"]]
    cmd = [sys.executable, "-m", "models.import", str(files["ok"]), "--name", "outside-api"]
    cmd += ["--classes", "benign,malignant,normal", "--dest", str(dest)]
    try:
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        listed = {m["name"]: m for m in client.get("/api/v1/models").json["items"]}
        assert listed["outside-api"]["metrics"]["split"] == NOT_EVALUATED
        assert listed["outside-api"]["architecture"] == "imported"
        r = client.post(
            "/api/v1/jobs",
            data={"file": (io.BytesIO(png_bytes(1)), "a.png"), "model": "outside-api"},
            content_type="multipart/form-data",
        )
        assert r.status_code == 202 and r.json["model"]["name"] == "outside-api"
    finally:
        shutil.rmtree(dest / "outside-api", ignore_errors=True)
