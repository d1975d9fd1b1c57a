"""The SAE feature diff of one layer, accumulated batch by batch in O(d_sae) memory.

Per feature and side (base, checkpoint): the sum and sum of squares of its activation over units (tokens, or
pooled probes for encoders) and how often it fires. Per probe, the difference of the feature's mean activation
between checkpoint and base — the same probe through both models — enters the paired test as running sums of d
and d². Reconstruction error is accumulated on the side for the transfer check.

The changed rule (statistical, the default): a paired t-test over probes on those per-probe differences,
Benjamini–Hochberg across the layer's features at false-discovery rate q, and a minimum effect: |Δ| at least
`min_effect` × the feature's pooled standard deviation over units. With `threshold`: |Δ| > threshold, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import false_discovery_control
from scipy.stats import t as student_t

ROW_BUDGET = 1 << 24  # feature activations encoded at once: rows × d_sae ≤ 16M floats (64 MB)


@dataclass
class Side:
    """One model's running sums for one layer."""

    d_sae: int
    d_in: int
    units: int = 0
    act: torch.Tensor = field(init=False)
    act2: torch.Tensor = field(init=False)
    fires: torch.Tensor = field(init=False)
    sse: float = 0.0  # Σ‖x − x̂‖²
    x_sum: torch.Tensor = field(init=False)
    x2: float = 0.0  # Σ‖x‖²

    def __post_init__(self) -> None:
        self.act = torch.zeros(self.d_sae, dtype=torch.float64)
        self.act2 = torch.zeros(self.d_sae, dtype=torch.float64)
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64)
        self.x_sum = torch.zeros(self.d_in, dtype=torch.float64)

    def add(self, x: torch.Tensor, feats: torch.Tensor, recon: torch.Tensor) -> None:
        f = feats.double()
        self.units += f.shape[0]
        self.act += f.sum(0).cpu()
        self.act2 += f.square().sum(0).cpu()
        self.fires += (f > 0).sum(0).double().cpu()
        x64 = x.double()
        self.sse += float((x64 - recon.double()).square().sum())
        self.x_sum += x64.sum(0).cpu()
        self.x2 += float(x64.square().sum())

    def mean(self) -> torch.Tensor:
        return self.act / max(self.units, 1)

    def var(self) -> torch.Tensor:
        return (self.act2 / max(self.units, 1) - self.mean().square()).clamp_min(0.0)

    def fvu(self) -> float:
        """Σ‖x − x̂‖² over the total variance Σ‖x − x̄‖²."""
        n = max(self.units, 1)
        total = self.x2 - float(self.x_sum.square().sum()) / n
        return self.sse / total if total > 0 else math.inf


@dataclass
class LayerDiff:
    """Both sides of one layer plus the per-probe paired differences."""

    sae: Any
    base: Side = field(init=False)
    tuned: Side = field(init=False)
    probes: int = 0
    d: torch.Tensor = field(init=False)
    d2: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        d_sae, d_in = int(self.sae.cfg.d_sae), int(self.sae.cfg.d_in)
        self.base, self.tuned = Side(d_sae, d_in), Side(d_sae, d_in)
        self.d = torch.zeros(d_sae, dtype=torch.float64)
        self.d2 = torch.zeros(d_sae, dtype=torch.float64)

    def add(self, x_base: torch.Tensor, x_tuned: torch.Tensor, counts: torch.Tensor) -> None:
        """Rows of activations (the same units through both models) and how many rows each probe has."""
        probe_of = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        sums = {side: torch.zeros(len(counts), self.base.d_sae, dtype=torch.float64) for side in ("base", "tuned")}
        step = max(1, ROW_BUDGET // self.base.d_sae)
        with torch.no_grad():
            for start in range(0, x_base.shape[0], step):
                rows = slice(start, start + step)
                for name, side, x in (("base", self.base, x_base[rows]), ("tuned", self.tuned, x_tuned[rows])):
                    feats = self.sae.encode(x)
                    side.add(x, feats, self.sae.decode(feats))
                    sums[name].index_add_(0, probe_of[rows].cpu(), feats.double().cpu())
        present = counts.cpu() > 0
        n = counts.cpu()[present].double().unsqueeze(1)
        diff = (sums["tuned"][present] - sums["base"][present]) / n
        self.probes += int(present.sum())
        self.d += diff.sum(0)
        self.d2 += diff.square().sum(0)


@dataclass
class Decision:
    delta: np.ndarray
    effect: np.ndarray  # |Δ| / pooled σ (nan where σ = 0)
    p: np.ndarray | None
    q: np.ndarray | None
    changed: np.ndarray
    rule: str


def decide(diff: LayerDiff, *, fdr: float, min_effect: float, threshold: float | None) -> Decision:
    """Which features changed, by the paired test (or the plain threshold)."""
    delta = (diff.tuned.mean() - diff.base.mean()).numpy()
    sigma = ((diff.base.var() + diff.tuned.var()) / 2).sqrt().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(sigma > 0, np.abs(delta) / sigma, np.nan)
    if threshold is not None:
        return Decision(
            delta,
            effect,
            None,
            None,
            np.abs(delta) > threshold,
            f"|Δ mean activation| > {threshold:g} (a plain threshold, no test)",
        )
    n = diff.probes
    rule = (
        f"paired t-test over {n} probes on each probe's mean activation (checkpoint − base), Benjamini–Hochberg "
        f"q < {fdr:g} across the layer's {diff.base.d_sae} features, and |Δ| ≥ {min_effect:g} × the feature's "
        "pooled standard deviation"
    )
    if n < 2:
        return Decision(delta, effect, None, None, np.zeros_like(delta, dtype=bool), rule + " (needs 2+ probes)")
    mean_d = (diff.d / n).numpy()
    var_d = ((diff.d2 - n * torch.from_numpy(mean_d).square()) / (n - 1)).clamp_min(0.0).numpy()
    se = np.sqrt(var_d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(mean_d) / se, np.where(mean_d != 0, np.inf, 0.0))
    p = np.clip(2 * student_t.sf(t, df=n - 1), 0.0, 1.0)
    q = false_discovery_control(p, method="bh")
    big_enough = np.where(sigma > 0, np.abs(delta) >= min_effect * sigma, np.abs(delta) > 0)
    return Decision(delta, effect, p, q, (q < fdr) & big_enough & (np.abs(delta) > 0), rule)
