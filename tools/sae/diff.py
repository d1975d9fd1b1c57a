"""The SAE feature diff of one layer, accumulated batch by batch in O(d_sae) memory.

Per feature and side (base, checkpoint): the sum and sum of squares of its activation over units (tokens, or
pooled probes for encoders) and how often it fires. Per probe, the difference of the feature's mean activation
between checkpoint and base — the same probe through both models — enters the paired test as running sums of d
and d². Reconstruction error is accumulated on the side for the transfer check, on a stated sample of units
(decoding every unit would cost a second SAE product per token).

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

ROW_BUDGET = 1 << 21  # feature activations encoded at once: rows × d_sae ≤ 2M floats (8 MB: reused from the heap
# and cache-sized; 64 MB chunks ran 1.7× slower, each a fresh page-faulted mapping)
FVU_STRIDE = 4  # the transfer check's reconstruction error is measured on every 4th unit ...
FVU_ALL_BELOW = 256  # ... of a batch with this many units or more (pooled probes: every one)


@dataclass
class Side:
    """One model's running sums for one layer: float32 within a chunk of rows, float64 across chunks."""

    d_sae: int
    d_in: int
    units: int = 0
    act: torch.Tensor = field(init=False)
    act2: torch.Tensor = field(init=False)
    fires: torch.Tensor = field(init=False)
    sampled: int = 0  # units whose reconstruction error was measured (see FVU_STRIDE)
    sse: float = 0.0  # Σ‖x − x̂‖² over them
    x_sum: torch.Tensor = field(init=False)
    x2: float = 0.0  # Σ‖x‖² over them

    def __post_init__(self) -> None:
        self.act = torch.zeros(self.d_sae, dtype=torch.float64)
        self.act2 = torch.zeros(self.d_sae, dtype=torch.float64)
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64)
        self.x_sum = torch.zeros(self.d_in, dtype=torch.float64)

    def add(self, feats: torch.Tensor, probe_sums: torch.Tensor, scratch: torch.Tensor) -> None:
        """A chunk's feature activations [rows, d_sae] (≥ 0) and their per-probe sums [probes, d_sae]; `scratch`
        is a buffer of at least feats' size (elementwise passes into it, then contiguous column sums)."""
        self.units += feats.shape[0]
        self.act += probe_sums.sum(0).double().cpu()
        buf = scratch[: feats.shape[0]]
        torch.mul(feats, feats, out=buf)
        self.act2 += buf.sum(0).double().cpu()
        torch.sign(buf, out=buf)  # activations are ≥ 0: 1 where the feature fires
        self.fires += buf.sum(0).double().cpu()

    def add_reconstruction(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        x64 = x.double()
        self.sampled += x.shape[0]
        self.sse += float((x64 - recon.double()).square().sum())
        self.x_sum += x64.sum(0).cpu()
        self.x2 += float(x64.square().sum())

    def mean(self) -> torch.Tensor:
        return self.act / max(self.units, 1)

    def var(self) -> torch.Tensor:
        return (self.act2 / max(self.units, 1) - self.mean().square()).clamp_min(0.0)

    def fvu(self) -> float:
        """Σ‖x − x̂‖² over the total variance Σ‖x − x̄‖², on the sampled units."""
        n = max(self.sampled, 1)
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
        """Rows of activations (the same units through both models) and how many rows each probe has. One
        encode per row and side; the per-probe sums are a product with the rows' one-hot probe membership; the
        reconstruction (a second SAE product) only on every FVU_STRIDE-th row, or every row when there are few."""
        n_probes = len(counts)
        probe_of = torch.repeat_interleave(torch.arange(n_probes, device=counts.device), counts)
        onehot = torch.nn.functional.one_hot(probe_of, n_probes).to(x_base.dtype)  # [rows, probes]
        sums = {side: torch.zeros(n_probes, self.base.d_sae, dtype=torch.float64) for side in ("base", "tuned")}
        stride = FVU_STRIDE if x_base.shape[0] >= FVU_ALL_BELOW else 1
        step = max(stride, ROW_BUDGET // self.base.d_sae // stride * stride)
        scratch = torch.empty(min(step, x_base.shape[0]), self.base.d_sae, dtype=x_base.dtype, device=x_base.device)
        with torch.no_grad():
            for start in range(0, x_base.shape[0], step):
                rows = slice(start, start + step)
                for name, side, x in (("base", self.base, x_base[rows]), ("tuned", self.tuned, x_tuned[rows])):
                    feats = self.sae.encode(x)
                    chunk_sums = onehot[rows].T @ feats
                    side.add(feats, chunk_sums, scratch)
                    sums[name] += chunk_sums.double().cpu()
                    sample = slice(None, None, stride)
                    side.add_reconstruction(x[sample], self.sae.decode(feats[sample]))
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
