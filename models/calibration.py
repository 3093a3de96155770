"""Temperature scaling and calibration figures (numpy + scipy; the plot needs matplotlib).

The networks end in a softmax, so the logits are ``log(p)`` up to a per-slice constant,
which softmax ignores: calibrated probabilities are ``softmax(log(p) / T)`` with one
temperature ``T`` fitted on the validation split by minimising the negative
log-likelihood (Guo et al., 2017, "On calibration of modern neural networks"). ``T``
does not change the arg-max, so labels and accuracy stay the same. Scoring is numpy
only, so the worker applies it to every batch at no measurable cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 10
_EPS = 1e-7


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row-wise; T = 1 returns the probabilities unchanged."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p.astype(np.float32)
    logits = np.log(np.clip(p, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y], _EPS, 1.0)
    return float(-np.log(p).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises validation NLL (bounded scalar search)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), y),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(res.x))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error of the top-class confidence, and the per-bin table."""
    p = np.asarray(probs)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            table.append({"low": edges[b], "high": edges[b + 1], "n": 0})
            continue
        acc, c = float(correct[m].mean()), float(conf[m].mean())
        ece += m.mean() * abs(acc - c)
        table.append(
            {"low": edges[b], "high": edges[b + 1], "n": int(m.sum()), "accuracy": acc, "conf": c}
        )
    return {"ece": float(ece), "bins": table}


def plot_reliability(curves: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Reliability diagram: accuracy against confidence per bin, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect calibration")
    for name, rel in curves.items():
        pts = [(b["conf"], b["accuracy"]) for b in rel["bins"] if b["n"]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-", label=f"{name} (ECE {rel['ece']:.3f})")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
