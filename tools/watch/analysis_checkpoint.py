"""Analysis checkpoints: dense, small snapshots of a model's insides during training — per-tensor
statistics and histograms of weights and gradients, sampled 32×32 grids of weights and gradients, each
trainable weight's movement from the first checkpoint, activation statistics, attention entropy per head —
written on a logarithmic cadence plus when something looks wrong.

Cadence: every 10 steps up to 100, every 50 up to 1000, every 200 up to 10000, then every 1000.
Triggers (each on its rising edge, so a lasting condition writes one extra checkpoint, not one per
step): loss above `loss_spike_ratio` × the mean of the previous `loss_window` losses; global grad norm
above `grad_norm_threshold`; a trainable parameter newly at a grad norm below `dead_param_norm`.

Sizes: statistics keep 4 significant digits (movement 5), grid cells 3; histograms are counts in equal bins over
[lo, hi] (32 for weights, 16 for gradients, which also skip percentiles); percentiles of a tensor
larger than `sample_size` come from an evenly strided sample of that size (mean, std, min, max and the
histogram always use every element); grids are stored for at most `max_grids` weight matrices spread
across depth, and their gradients get a grid of the same rows and columns. A 0.5B-parameter model comes
to about 275 KB (bench/watch.py).

Movement: at its first checkpoint the recorder keeps a float32 CPU copy of every trainable parameter
(requires_grad) — the whole tensor up to `movement_sample` elements, else that many positions drawn uniformly
at random, the same at every checkpoint (`movement_sample=0`: every element) — and each later checkpoint
records ‖w − w_ref‖ / ‖w_ref‖ on those elements (exact for tensors that fit, an estimate for the rest; the
file's `movement` block says which sample size was used). The estimate tightens with the sample
(tests/test_analysis_recorder.py measures it). About 4 × movement_sample bytes per large tensor: 45 MB for
a 0.5B model.

Gradients are those present when `record()` runs — StepLogger.step, after backward and before
optimizer.step. Call it before `clip_grad_norm_` to record pre-clip gradients, which is what lets a viewer
count clipped steps against `grad_clip`; recorded after clipping, the global norm never exceeds the clip.
The file carries `schema_version`; readers refuse any version they do not know.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from tools.watch.analysis_schema import (
    GRID,
    PERCENTILES,
    SCHEMA_VERSION,
    ActivationStats,
    AnalysisCheckpoint,
    AttentionStats,
    Histogram,
    Movement,
    Reason,
    TensorStats,
    read_analysis_checkpoint,
)
from toolserver.contract import atomic_write

__all__ = ["PERCENTILES", "SCHEMA_VERSION", "read_analysis_checkpoint"]  # the file's schema, from analysis_schema
DEFAULT_ACTIVATION_REGEX = r"(^|\.)(h|layers|blocks|layer)\.\d+(\.(attn|self_attn|attention|mlp))?$"


class AnalysisConfig(BaseModel):
    bins: int = Field(32, ge=2, description="histogram bins for weights")
    grad_bins: int = Field(16, ge=2, description="histogram bins for gradients")
    sample_size: int = Field(1 << 18, ge=1024, description="elements sampled for percentiles of large tensors")
    max_grids: int = Field(5, ge=0, description="weight matrices that get a sampled 32×32 grid")
    activation_regex: str = Field(DEFAULT_ACTIVATION_REGEX, description="modules whose outputs are summarised")
    loss_spike_ratio: float = Field(2.0, gt=1, description="trigger: loss > ratio × moving average")
    loss_window: int = Field(20, ge=2, description="losses in that moving average")
    grad_norm_threshold: float = Field(10.0, gt=0, description="trigger: global grad norm above this")
    dead_param_norm: float = Field(1e-10, ge=0, description="trigger: a trainable parameter's grad norm below this")
    movement_sample: int = Field(
        65_536,
        ge=0,
        description="elements of each trainable parameter kept as the movement reference (larger tensors: this many "
        "positions drawn uniformly, the same at every checkpoint); 0 keeps every element",
    )
    grad_clip: float | None = Field(
        None, gt=0, description="the run's gradient clip norm, written into each checkpoint for the viewer"
    )


def _r(x: float, digits: int = 4) -> float:
    """Significant digits enough for a dashboard, at a fraction of the bytes."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def _index(n: int, k: int) -> torch.Tensor:
    """min(n, k) evenly spaced indices into n (float64: float32 cannot address 136M-element tensors)."""
    return torch.linspace(0, n - 1, min(n, k), dtype=torch.float64).round().long()


def movement_sample(n: int, k: int) -> torch.Tensor:
    """k of n positions drawn uniformly (with replacement, sorted) from a generator seeded by n and k: the same
    positions at every checkpoint, without an n-sized permutation, and no aliasing with a row length (an even
    stride that divides it would see only some columns: 256 of a 4,096 × 4,096 matrix's positions, 16 columns)."""
    g = torch.Generator().manual_seed(n * 1_000_003 + k)
    return torch.randint(0, n, (k,), generator=g).sort().values


def sampled_grid(t: torch.Tensor, size: int = GRID) -> list[list[float]]:
    """Evenly spaced rows and columns of the tensor viewed as (first dim, rest)."""
    m = t.detach().reshape(t.shape[0], -1) if t.dim() > 1 else t.detach().reshape(1, -1)
    rows, cols = _index(m.shape[0], size), _index(m.shape[1], size)
    return [[_r(v, 3) for v in row] for row in m[rows][:, cols].float().tolist()]


def tensor_stats(t: torch.Tensor, cfg: AnalysisConfig, *, gradient: bool = False, grid: bool = False) -> TensorStats:
    """Weights: moments, percentiles, `bins`-bin histogram, optionally a grid. Gradients (the leaner
    contract): moments and norm, `grad_bins`-bin histogram."""
    flat = t.detach().reshape(-1).float()
    bins = cfg.grad_bins if gradient else cfg.bins
    lo, hi = flat.min(), flat.max()
    mean, std, norm = flat.mean(), flat.std(correction=0), torch.linalg.vector_norm(flat)
    percentiles = None
    if not gradient:
        sample = flat if flat.numel() <= cfg.sample_size else flat[_index(flat.numel(), cfg.sample_size)]
        q = torch.quantile(sample, torch.tensor(PERCENTILES, dtype=torch.float32) / 100)
        percentiles = [_r(v) for v in q.tolist()]
    scalars = torch.stack([mean, std, lo, hi, norm]).tolist()
    values, h_lo, h_hi = flat, scalars[2], scalars[3]
    if not math.isfinite(scalars[4]):  # NaN/inf (an overflowed step): the histogram counts the finite elements
        values = flat[torch.isfinite(flat)]
        h_lo, h_hi = torch.stack([values.min(), values.max()]).tolist() if values.numel() else (0.0, 0.0)
    if h_hi > h_lo:
        counts = [int(c) for c in torch.histc(values, bins=bins, min=h_lo, max=h_hi).tolist()]
    else:  # a constant tensor: everything in the first bin
        counts = [values.numel()] + [0] * (bins - 1)
    return TensorStats(
        shape=list(t.shape),
        mean=_r(scalars[0]),
        std=_r(scalars[1]),
        min=_r(scalars[2]),
        max=_r(scalars[3]),
        norm=_r(scalars[4]),
        percentiles=percentiles,
        histogram=Histogram(lo=_r(h_lo), hi=_r(h_hi), counts=counts),
        grid=sampled_grid(t) if grid else None,
    )


def activation_stats(t: torch.Tensor) -> ActivationStats:
    flat = t.detach().reshape(-1).float()
    values = torch.stack(
        [flat.mean(), flat.std(correction=0), flat.min(), flat.max(), (flat.abs() <= 1e-6).float().mean()]
    ).tolist()
    return ActivationStats(
        shape=list(t.shape),
        mean=_r(values[0]),
        std=_r(values[1]),
        min=_r(values[2]),
        max=_r(values[3]),
        sparsity=_r(values[4]),
    )


def attention_stats(pattern: torch.Tensor) -> AttentionStats:
    """From a [batch, heads, queries, keys] pattern. Rows are renormalised (attention dropout in train
    mode leaves rows that do not sum to 1); all-zero rows are ignored."""
    p = pattern.detach().float()
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # [batch, heads, queries]
    peak = p.max(-1).values
    ent, top = entropy.mean(dim=(0, 2)).tolist(), peak.mean(dim=(0, 2)).tolist()
    return AttentionStats(
        entropy_per_head=[_r(v) for v in ent],
        max_attn_per_head=[_r(v) for v in top],
        grid_per_head=[sampled_grid(p[0, h]) for h in range(p.shape[1])],
    )


def grid_picks(names_and_dims: Sequence[tuple[str, int]], max_grids: int) -> set[str]:
    """The weight matrices that get a grid: `max_grids` of them, evenly spread in parameter order (depth)."""
    matrices = [n for n, dims in names_and_dims if dims >= 2]
    return {matrices[i] for i in _index(len(matrices), max_grids).tolist()} if matrices and max_grids else set()


def summarise(
    step: int,
    loss: float | None,
    reasons: list[Reason],
    tensors: Iterable[tuple[str, torch.Tensor, torch.Tensor | None]],
    cfg: AnalysisConfig,
    grid_names: set[str],
) -> AnalysisCheckpoint:
    """A checkpoint from (name, weight, grad) triples, consumed one at a time (a stream of tensors never
    needs the whole model in memory)."""
    weights: dict[str, TensorStats] = {}
    gradients: dict[str, TensorStats] = {}
    n_params = 0
    with torch.no_grad():
        for name, weight, grad in tensors:
            n_params += weight.numel()
            weights[name] = tensor_stats(weight, cfg, grid=name in grid_names)
            if grad is not None:
                gradients[name] = tensor_stats(grad, cfg, gradient=True, grid=name in grid_names)
    return AnalysisCheckpoint(
        step=step,
        loss=loss if loss is None or math.isfinite(loss) else None,
        reasons=reasons,
        n_params=n_params,
        grad_clip=cfg.grad_clip,
        weights=weights,
        gradients=gradients,
    )


def scheduled(step: int) -> bool:
    """The logarithmic cadence."""
    every = 10 if step <= 100 else 50 if step <= 1000 else 200 if step <= 10_000 else 1000
    return step % every == 0


class Triggers:
    """Rising-edge event triggers over the loss, the global grad norm and per-parameter grad norms."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        self._losses: deque[float] = deque(maxlen=cfg.loss_window)
        self._spiking = self._over = False
        self._dead: set[int] = set()

    def check(self, loss: float | None, param_norms: Sequence[float] | None) -> list[Reason]:
        cfg, out = self.cfg, []
        if loss is not None and math.isfinite(loss):
            full = len(self._losses) == cfg.loss_window
            spiking = full and loss > cfg.loss_spike_ratio * (sum(self._losses) / len(self._losses))
            if spiking and not self._spiking:
                out.append("loss_spike")
            self._spiking = spiking
            self._losses.append(loss)
        if param_norms is not None:
            total = math.hypot(*param_norms)
            over = total > cfg.grad_norm_threshold
            if over and not self._over:
                out.append("grad_norm")
            self._over = over
            dead = {i for i, norm in enumerate(param_norms) if norm < cfg.dead_param_norm}
            if dead - self._dead:
                out.append("dead_param")
            self._dead = dead
        return out  # type: ignore[return-value]


class MovementReference:
    """Each trainable parameter as it was at the first checkpoint (see the module docstring), and how far it
    has moved since."""

    def __init__(self, step: int, sample: int, params: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.block = Movement(reference_step=step, sample=sample)
        self._kept = {name: self._elements(p, copy=True) for name, p in params}

    def _elements(self, t: torch.Tensor, copy: bool) -> torch.Tensor:
        flat = t.detach().reshape(-1)
        sample = self.block.sample
        if sample and flat.numel() > sample:
            flat = flat[movement_sample(flat.numel(), sample).to(flat.device)]  # a gather: already a copy
            copy = False
        return flat.to("cpu", torch.float32, copy=copy)

    def moved(self, name: str, t: torch.Tensor) -> tuple[float | None, float | None]:
        """(‖w − w_ref‖ / ‖w_ref‖, None), or (None, RMS of w − w_ref) when ‖w_ref‖ = 0; (None, None) for a
        parameter without a reference (one that became trainable later)."""
        ref = self._kept.get(name)
        if ref is None:
            return None, None
        delta = torch.linalg.vector_norm(self._elements(t, copy=False) - ref).item()
        base = torch.linalg.vector_norm(ref).item()
        return (_r(delta / base, 5), None) if base > 0 else (None, _r(delta / math.sqrt(ref.numel()), 5))


class AnalysisRecorder:
    """Writes `analysis_{step:08d}.json` files into `out_dir`.

    arm()     before a forward pass whose step may be recorded: hooks summarise the outputs of modules
              matching `activation_regex` and any TransformerLens `hook_pattern` (attention patterns)
    record()  after backward: writes a checkpoint if the step is scheduled or a trigger fired
    """

    def __init__(self, model: nn.Module, out_dir: str | Path, config: AnalysisConfig | None = None) -> None:
        self.model, self.out_dir = model, Path(out_dir)
        self.cfg = cfg = config or AnalysisConfig()
        self.triggers = Triggers(cfg)
        self._act_re = re.compile(cfg.activation_regex)
        self._hooks: list[Any] = []
        self._activations: dict[str, ActivationStats] = {}
        self._patterns: dict[str, AttentionStats] = {}
        self._grid_names = grid_picks([(n, p.dim()) for n, p in model.named_parameters()], cfg.max_grids)
        self.reference: MovementReference | None = None  # taken at the first checkpoint
        self.written: list[Path] = []

    def arm(self) -> None:
        if self._hooks:
            return
        for name, module in self.model.named_modules():
            if name.endswith("hook_pattern"):
                self._hooks.append(module.register_forward_hook(self._pattern_hook(name.rsplit(".", 1)[0])))
            elif name and self._act_re.search(name):
                self._hooks.append(module.register_forward_hook(self._activation_hook(name)))

    def _activation_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor):
                with torch.no_grad():
                    self._activations[name] = activation_stats(out)

        return hook

    def _pattern_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            with torch.no_grad():
                self._patterns[name] = attention_stats(output)

        return hook

    def disarm(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def record(
        self,
        step: int,
        loss: float | None,
        param_norms: Sequence[float] | None = None,
        *,
        attentions: Sequence[torch.Tensor] | None = None,
    ) -> Path | None:
        """Write a checkpoint for this step if due. `attentions`: per-layer patterns, e.g. a Hugging Face
        model's `outputs.attentions` (run it with output_attentions=True)."""
        reasons: list[Reason] = (["scheduled"] if scheduled(step) else []) + self.triggers.check(loss, param_norms)
        activations, patterns = self._activations, self._patterns
        self._activations, self._patterns = {}, {}
        self.disarm()
        if not reasons:
            return None
        for i, pattern in enumerate(attentions or ()):
            patterns[f"layer.{i}"] = attention_stats(pattern)
        tensors = ((n, p, p.grad) for n, p in self.model.named_parameters())
        checkpoint = summarise(step, loss, reasons, tensors, self.cfg, self._grid_names)
        checkpoint.activations, checkpoint.attention = activations, patterns
        self._measure_movement(checkpoint)
        return self._write(checkpoint)

    def _measure_movement(self, checkpoint: AnalysisCheckpoint) -> None:
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            if self.reference is None:
                self.reference = MovementReference(checkpoint.step, self.cfg.movement_sample, trainable)
            for name, p in trainable:
                stats = checkpoint.weights[name]
                stats.moved, stats.moved_rms = self.reference.moved(name, p)
        checkpoint.movement = self.reference.block

    def _write(self, checkpoint: AnalysisCheckpoint) -> Path:
        """Write-then-rename: a dashboard polling the folder never reads half a file."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"analysis_{checkpoint.step:08d}.json"
        atomic_write(path, checkpoint.model_dump_json(exclude_none=True))
        self.written.append(path)
        return path
