"""Out-of-distribution (OOD) detection for slices: is this input like the training data?

Two checks, both fitted on the model's training split and thresholded on its validation
split (held-out patients of the same source, i.e. in-distribution data the model has
not seen):

* **Feature distance.** For each feature vector the model offers (the global average of
  every conv stage's pooled output, and the penultimate vector, i.e. the input of the
  softmax layer; :func:`models.serving.feature_tensors`), the Mahalanobis distance to the
  nearest class mean with one shared covariance matrix (Lee et al., 2018, "A simple
  unified framework for detecting out-of-distribution samples", including its use of
  several layers). Means and covariance come from the training split; the covariance is
  shrunk (Ledoit-Wolf) because there are a few hundred slices for up to 128 dimensions.
  Each layer's distance is divided by its median on the training split and the layers
  are averaged: the slice's ``ood_score`` (about 1 for a typical training slice).
* **Input checks.** Two cheap statistics of the preprocessed image, its mean intensity
  and its fraction of black pixels (<= 2/255), must lie inside the training split's
  0.5-99.5 % range widened by 10 % of that range: a blank frame, a photo, a lung-window
  rendering or an inverted image fails them without needing the network.

A slice is ``out_of_distribution`` when its score is above the threshold or an input
check fails. The threshold is the lowest value for which at most ``target_rate`` (5 %)
of the validation slices are flagged by either rule.

Scoring is numpy only (the worker computes it from the features of the same forward
pass that gives the probabilities); fitting uses scikit-learn's Ledoit-Wolf estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OOD_FILE = "ood.npz"
DARK_LEVEL = 2.0 / 255.0
TARGET_RATE = 0.05
INPUT_QUANTILES = (0.005, 0.995)
INPUT_MARGIN = 0.10
# A series (or a whole study) is out of distribution when at least this fraction of its
# readable slices is flagged: five times the per-slice rate allowed on in-distribution
# validation slices, so a few stray flags do not mark it. A study is also marked when any
# of its series is: its verdict is built from every series. worker/summary.py applies it.
STUDY_MIN_FRACTION = 0.25


def input_stats(batch: np.ndarray) -> np.ndarray:
    """Per-slice (mean intensity, black-pixel fraction) of a preprocessed batch (n, h, w, c)."""
    flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
    return np.stack([flat.mean(axis=1), (flat <= DARK_LEVEL).mean(axis=1)], axis=1)


@dataclass
class LayerStats:
    """Class means, shared precision matrix and training median distance of one layer."""

    means: np.ndarray  # (classes, d)
    precision: np.ndarray  # (d, d)
    scale: float = 1.0

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> LayerStats:
        from sklearn.covariance import LedoitWolf

        f = np.asarray(features, dtype=np.float64)
        classes = np.unique(labels)
        means = np.stack([f[labels == k].mean(axis=0) for k in classes])
        centred = f - means[np.searchsorted(classes, labels)]
        stats = cls(means, LedoitWolf().fit(centred).precision_)
        stats.scale = float(np.median(stats.distance(f))) or 1.0
        return stats

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, per slice."""
        f = np.asarray(features, dtype=np.float64)
        d2 = np.full(len(f), np.inf)
        for mean in self.means:  # a matrix product per class: far faster than one einsum
            diff = f - mean
            d2 = np.minimum(d2, np.sum((diff @ self.precision) * diff, axis=1))
        return np.sqrt(np.maximum(d2, 0.0))


@dataclass
class OODDetector:
    """Per-layer statistics, input-statistic bounds and the threshold."""

    layers: list[LayerStats]
    input_low: np.ndarray  # (2,) lower bounds of input_stats
    input_high: np.ndarray  # (2,)
    threshold: float = float("inf")

    @classmethod
    def fit(
        cls, features: Sequence[np.ndarray], labels: np.ndarray, batch: np.ndarray
    ) -> OODDetector:
        """Fit on training-split features (one (n, d) array per layer), labels and images."""
        layers = [LayerStats.fit(f, labels) for f in features]
        stats = input_stats(batch)
        low, high = np.quantile(stats, INPUT_QUANTILES, axis=0)
        margin = INPUT_MARGIN * (high - low)
        return cls(layers, low - margin, high + margin)

    def feature_scores(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Mean over layers of the distance divided by its training median, per slice."""
        if len(features) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} feature arrays, got {len(features)}")
        parts = [st.distance(f) / st.scale for st, f in zip(self.layers, features, strict=True)]
        return np.mean(parts, axis=0)

    def input_flags(self, batch: np.ndarray) -> np.ndarray:
        """True where a slice's mean intensity or black fraction is outside the training range."""
        stats = input_stats(batch)
        return np.any((stats < self.input_low) | (stats > self.input_high), axis=1)

    def score(
        self, features: Sequence[np.ndarray], batch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ood_score, out_of_distribution) per slice."""
        scores = self.feature_scores(features)
        return scores, (scores > self.threshold) | self.input_flags(batch)

    def set_threshold(
        self, features: Sequence[np.ndarray], batch: np.ndarray, target_rate: float = TARGET_RATE
    ) -> dict[str, Any]:
        """Lowest threshold that flags at most ``target_rate`` of these (validation) slices."""
        scores = self.feature_scores(features)
        by_input = self.input_flags(batch)
        allowed = int(np.floor(target_rate * len(scores))) - int(by_input.sum())
        rest = np.sort(scores[~by_input])[::-1]
        if len(rest) == 0:
            self.threshold = float("inf")
        else:
            # flag the ``allowed`` highest scores: threshold = the next one (strict >)
            self.threshold = float(rest[min(max(allowed, 0), len(rest) - 1)])
        flags = (scores > self.threshold) | by_input
        return {
            "threshold": self.threshold,
            "flag_rate": float(flags.mean()),
            "flagged": int(flags.sum()),
            "flagged_by_input_checks": int(by_input.sum()),
            "n": len(scores),
        }

    def save(self, path: Path) -> None:
        """Write the detector as a small npz next to the model."""
        arrays: dict[str, np.ndarray | np.generic] = {
            "input_low": self.input_low,
            "input_high": self.input_high,
            "threshold": np.float64(self.threshold),
            "n_layers": np.int64(len(self.layers)),
        }
        for i, st in enumerate(self.layers):
            arrays[f"means_{i}"] = st.means
            arrays[f"precision_{i}"] = st.precision
            arrays[f"scale_{i}"] = np.float64(st.scale)
        np.savez(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> OODDetector:
        """Read a detector written by :meth:`save`."""
        with np.load(path) as z:
            layers = [
                LayerStats(z[f"means_{i}"], z[f"precision_{i}"], float(z[f"scale_{i}"]))
                for i in range(int(z["n_layers"]))
            ]
            return cls(layers, z["input_low"], z["input_high"], float(z["threshold"]))


def group_flag_rate(flags: np.ndarray, groups: np.ndarray, min_fraction: float) -> dict[str, Any]:
    """How many groups (pseudo-patients) the study rule would flag: fraction >= min_fraction."""
    ids = np.unique(groups)
    fractions = np.array([flags[groups == g].mean() for g in ids])
    flagged = fractions >= min_fraction
    return {
        "groups": len(ids),
        "groups_flagged": int(flagged.sum()),
        "max_group_fraction": float(fractions.max()) if len(ids) else 0.0,
    }
