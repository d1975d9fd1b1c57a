"""Calibration of one model's predictions: ECE, MCE and reliability bins (10 equal-width bins over [0, 1], a
confidence of exactly 1 in the last, as netcal bins them), per-topic ECE, and a paired bootstrap over rows for
the ECE difference between two models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

BINS = 10


class Bin(BaseModel):
    lower: float
    upper: float
    count: int
    confidence: float | None = Field(description="mean confidence in the bin (None when empty)")
    accuracy: float | None = Field(description="share correct in the bin (None when empty)")


class Calibration(BaseModel):
    predictions: int
    accuracy: float | None
    mean_confidence: float | None
    ece: float | None = Field(description=f"Σ_b (n_b / N) |acc_b − conf_b| over {BINS} equal-width bins")
    mce: float | None = Field(description="max over non-empty bins of |acc_b − conf_b|")
    bins: list[Bin]


def _bin_index(conf: np.ndarray) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, BINS + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, BINS - 1)


def ece_mce(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """ECE and MCE; `weight` counts each prediction that many times (a bootstrap resample)."""
    w = np.ones(len(conf)) if weight is None else weight
    idx = _bin_index(conf)
    counts = np.bincount(idx, weights=w, minlength=BINS)
    conf_sum = np.bincount(idx, weights=conf * w, minlength=BINS)
    acc_sum = np.bincount(idx, weights=correct * w, minlength=BINS)
    full = counts > 0
    gaps = np.abs(acc_sum[full] / counts[full] - conf_sum[full] / counts[full])
    return float((counts[full] / counts.sum() * gaps).sum()), float(gaps.max())


def calibrate(conf: Sequence[float], correct: Sequence[bool]) -> Calibration:
    c, y = np.asarray(conf, dtype=float), np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    if len(c) == 0:
        bins = [Bin(lower=edges[i], upper=edges[i + 1], count=0, confidence=None, accuracy=None) for i in range(BINS)]
        return Calibration(predictions=0, accuracy=None, mean_confidence=None, ece=None, mce=None, bins=bins)
    idx = _bin_index(c)
    bins = []
    for i in range(BINS):
        sel = idx == i
        n = int(sel.sum())
        bins.append(
            Bin(
                lower=float(edges[i]),
                upper=float(edges[i + 1]),
                count=n,
                confidence=float(c[sel].mean()) if n else None,
                accuracy=float(y[sel].mean()) if n else None,
            )
        )
    ece, mce = ece_mce(c, y)
    return Calibration(
        predictions=len(c), accuracy=float(y.mean()), mean_confidence=float(c.mean()), ece=ece, mce=mce, bins=bins
    )


def bootstrap_difference(
    rows_a: Sequence[tuple[list[float], list[bool]]],
    rows_b: Sequence[tuple[list[float], list[bool]]],
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """95% percentile interval of ECE(b) − ECE(a), resampling rows with replacement (the same rows for both:
    the two models answered the same rows). Each row holds its predictions (one, or one per response token)."""
    rng = np.random.default_rng(seed)
    n = len(rows_a)
    flat = []
    for rows in (rows_a, rows_b):
        conf = np.concatenate([np.asarray(c, dtype=float) for c, _ in rows])
        corr = np.concatenate([np.asarray(y, dtype=bool) for _, y in rows])
        owner = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(rows)])
        flat.append((conf, corr, owner))
    diffs = np.empty(resamples)
    for k in range(resamples):
        weight = np.bincount(rng.integers(0, n, n), minlength=n)  # times each row is drawn
        values = []
        for conf, corr, owner in flat:
            w = weight[owner]
            keep = w > 0
            values.append(ece_mce(conf[keep], corr[keep], w[keep])[0])
        diffs[k] = values[1] - values[0]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)
