"""The worker's forward pass on ONNX Runtime (models/onnx_runtime.py): same outputs, or Keras."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from models import onnx_runtime  # noqa: E402  (before onnxruntime: it turns telemetry off)

pytest.importorskip("onnxruntime")
from models.architectures import build_model  # noqa: E402
from models.folding import fold_batchnorm  # noqa: E402
from models.serving import with_features  # noqa: E402

SHAPE = (32, 32, 1)


def _model() -> keras.Model:
    """cnn6 as the worker serves it: batch-norm folded, with its OOD feature outputs."""
    return with_features(fold_batchnorm(build_model("cnn6", SHAPE, 3)))


def test_runtime_choice() -> None:
    assert not onnx_runtime.wanted("keras")
    assert onnx_runtime.wanted("onnx")
    # this test host has no GPU: auto takes ONNX Runtime
    assert onnx_runtime.wanted("auto") == (keras.backend.backend() == "tensorflow")


def test_every_output_matches_keras() -> None:
    model = _model()
    run = onnx_runtime.onnx_runner(model, SHAPE)
    assert run is not None
    x = np.random.default_rng(3).random((5, *SHAPE), dtype=np.float32)
    got = run(x)
    expected = model.predict_on_batch(x)
    assert len(got) == len(expected) == len(model.outputs) > 1
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert run(x[:1])[0].shape == (1, 3)  # any batch size, one session


def test_nothing_is_left_in_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No telemetry session file (ONNX Runtime's is off) and no autograph sources of the
    export stay behind: a worker's temporary folder holds nothing of a model it loaded."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert onnx_runtime.onnx_runner(_model(), SHAPE) is not None
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_model_that_does_not_convert_is_served_by_keras(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_model: object) -> bytes:
        raise ValueError("unsupported op")

    monkeypatch.setattr(onnx_runtime, "_exported", refuse)
    with caplog.at_level(logging.WARNING, logger="models.onnx_runtime"):
        assert onnx_runtime.onnx_runner(_model(), SHAPE) is None
    assert "ONNX Runtime not used (ValueError: unsupported op)" in caplog.text


def test_a_conversion_that_differs_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(onnx_runtime, "TOLERANCE", 0.0)
    model = _model()
    with caplog.at_level(logging.WARNING, logger="models.onnx_runtime"):
        run = onnx_runtime.onnx_runner(model, SHAPE)
    differs = "differs from Keras" in caplog.text
    # float rounding differs between the runtimes; if it happened to be exact, it is used
    assert (run is None) == differs


def test_predictor_gives_the_same_answers_on_either_runtime() -> None:
    """The worker's Predictor (probabilities, calibration, OOD scores and flags) on the
    shipped model: ONNX Runtime against Keras on real-looking batches."""
    from config import get_settings
    from models.registry import Registry
    from worker.inference import Predictor

    card = Registry(get_settings().models_dirs).get(get_settings().default_model)
    on_keras = Predictor.load(card, "keras")
    on_onnx = Predictor.load(card, "onnx")
    assert on_keras.run is None and on_onnx.run is not None
    x = np.random.default_rng(4).random((8, *card.input.shape), dtype=np.float32)
    a, b = on_keras.predict(x), on_onnx.predict(x)
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
    if a.ood_score is not None:
        np.testing.assert_allclose(b.ood_score, a.ood_score, rtol=1e-3)
        assert b.out_of_distribution is not None
    assert (b.probabilities.argmax(1) == a.probabilities.argmax(1)).all()


def test_one_thread_lanes_give_the_same_answers_at_once() -> None:
    """FORWARD_LANES: a one-thread session serves several passes at once (the worker's
    lanes), each with the answers of the default session run alone."""
    from concurrent.futures import ThreadPoolExecutor

    from config import get_settings
    from models.registry import Registry
    from worker.inference import Predictor, lane_threads

    card = Registry(get_settings().models_dirs).get(get_settings().default_model)
    alone = Predictor.load(card, "onnx", 1)
    lanes = Predictor.load(card, "onnx", 3)
    assert (alone.lanes, lanes.lanes) == (1, 3)
    assert lane_threads(1) == 0 and lane_threads(3) >= 1
    rng = np.random.default_rng(5)
    batches = [rng.random((6, *card.input.shape), dtype=np.float32) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lanes.predict, batches))
    for x, got in zip(batches, together, strict=True):
        want = alone.predict(x)
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
        if want.ood_score is not None:
            np.testing.assert_allclose(got.ood_score, want.ood_score, rtol=1e-5)


def test_lanes_on_keras_stay_one(caplog: pytest.LogCaptureFixture) -> None:
    """Keras runs one pass at a time: a FORWARD_LANES number is logged as unused."""
    from config import get_settings
    from models.registry import Registry
    from worker.inference import Predictor, forward_lanes, usable_cpus

    assert forward_lanes(3) == 3
    assert forward_lanes("auto") == min(8, usable_cpus())
    card = Registry(get_settings().models_dirs).get(get_settings().default_model)
    with caplog.at_level(logging.INFO, logger="worker.inference"):
        on_keras = Predictor.load(card, "keras", 4)
    assert on_keras.lanes == 1
    assert "FORWARD_LANES=4 unused" in caplog.text
