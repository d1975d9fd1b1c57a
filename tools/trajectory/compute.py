"""One pass over the base and every checkpoint, tensor by tensor: each file is read once.

For a tensor, the base is read (and upcast) once; then each checkpoint in step order gives
ΔW_k = W_k − W_base (its norm, and σ_max for a layer matrix), the movement u_k = W_k − W_{k−1} and
⟨u_k, u_{k−1}⟩ — each from two float32 values held at once, never by subtracting large sums (late in a
run the movement is a thousandth of ΔW, where ‖Δ_k‖² + ‖Δ_{k−1}‖² − 2⟨Δ_k, Δ_{k−1}⟩ would lose it).
A matrix's σ_max starts from the previous checkpoint's top singular directions, so a slowly turning update
needs one or two Lanczos steps. LoRA checkpoints are measured from their factors: movement and inner
products of low-rank differences come from r×r products, ΔW is never formed.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from session.checkpoint_lora import LoraPair
from session.checkpoints import CheckpointReader
from tools.weight_diff.compute import DeltaOperator, Prefetcher, Workspace, sum_squares, torch_threads
from tools.weight_diff.layout import MATRIX_ORDER, Part, place
from tools.weight_diff.spectral import DenseOperator, lowrank_spectrum, top_singular
from toolserver.contract import Reporter, ToolError

TILE = 1 << 20  # values per tile of the pass: six float32 tiles (24 MB) stay in cache
WHOLE = 1 << 22  # ΔW of a layer matrix up to 4M values is held whole (16 MB) for σ_max; larger is recomputed
RTOL = 1e-4  # σ_max to 1e-4 relative: stable ranks to ~2e-4, far below what the table shows
BLOCK = 8
THREADS = 2
PREFETCH = 64 << 20  # bytes read ahead: N+1 files per tensor, so a short window keeps the reads in step (measured)


class Dropped(Exception):
    """Checkpoint `index` cannot be analysed (unreadable tensor, NaN/inf): the pass is rerun without it."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.reason = index, reason


@dataclass
class Sums:
    """One checkpoint's running sums over the tensors seen so far."""

    fro2: float = 0.0
    base2: float = 0.0
    move2: float = 0.0
    dot: float = 0.0
    type_fro2: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    type_base2: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    type_move2: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    type_dot: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    layer_fro2: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    layer_base2: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    stable_ranks: list[float] = field(default_factory=list)
    top: tuple[float, str] | None = None

    def add(self, where: tuple[int, str] | None, fro2: float, base2: float, move2: float, dot: float) -> None:
        self.fro2, self.base2, self.move2, self.dot = (
            self.fro2 + fro2,
            self.base2 + base2,
            self.move2 + move2,
            self.dot + dot,
        )
        if where is None:
            return
        layer, matrix = where
        self.type_fro2[matrix] += fro2
        self.type_base2[matrix] += base2
        self.type_move2[matrix] += move2
        self.type_dot[matrix] += dot
        self.layer_fro2[layer] += fro2
        self.layer_base2[layer] += base2

    def matrix(self, where: tuple[int, str], fro2: float, base2: float, sigma: float | None) -> None:
        if sigma and sigma > 0:
            self.stable_ranks.append(fro2 / sigma**2)
        if base2 > 0 and fro2 > 0:
            rel = math.sqrt(fro2 / base2)
            if self.top is None or rel > self.top[0]:
                self.top = (rel, f"layer {where[0]} {where[1]}")

    def median_stable_rank(self) -> float | None:
        return statistics.median(self.stable_ranks) if self.stable_ranks else None


@dataclass
class Pass:
    sums: list[Sums]
    keys: int
    matrix_types: list[str]
    n_layers: int
    base_nonfinite: list[str]


def _finite(index: int, key: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise Dropped(index, f"NaN or inf in {key}")


def _where(section: str, layer: int | None, part: Part) -> tuple[int, str] | None:
    return (layer, part.matrix) if section == "layer" and layer is not None else None


def _rows2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1) if t.dim() < 2 else t


def _columns(t: torch.Tensor, part: Part) -> torch.Tensor:
    t = t.reshape(t.shape[0], -1) if t.dim() > 1 else t
    return t if part.cols is None else t[:, part.cols[0] : part.cols[1]]


class Stream:
    """The base and the checkpoints (in step order), measured key by key into one Sums per checkpoint."""

    def __init__(self, base: CheckpointReader, ckpts: list[CheckpointReader], reporter: Reporter) -> None:
        self.base, self.ckpts, self.reporter = base, ckpts, reporter
        self.work = Workspace()
        self.sums = [Sums() for _ in ckpts]
        self.types: set[str] = set()
        self.layers: set[int] = set()
        self.base_nonfinite: list[str] = []

    def _get(self, index: int, key: str) -> torch.Tensor:
        try:
            return self.ckpts[index].get(key)
        except ToolError as e:
            raise Dropped(index, e.message) from None

    # ----- full checkpoints -------------------------------------------------------------------------------------
    def dense(self, key: str) -> None:
        old = self.base.get(key)
        if not old.is_floating_point():
            return
        news = [self._get(k, key) for k in range(len(self.ckpts))]
        placement = place(key, tuple(old.shape))
        for part in placement.parts or (Part("other"),):
            where = _where(placement.section, placement.layer, part)
            base_part, parts = _columns(old, part), [_columns(n, part) for n in news]
            if where is not None:
                self.types.add(where[1])
                self.layers.add(where[0])
            self._measure(key, base_part, parts, where)

    def _measure(self, key: str, old: torch.Tensor, news: list[torch.Tensor], where: tuple[int, str] | None) -> None:
        old2, news2 = _rows2d(old), [_rows2d(t) for t in news]
        if where is not None and old2.numel() <= WHOLE:
            self._whole(key, old2, news2, where)
        else:
            self._tiled(key, old2, news2, where)

    def _whole(self, key: str, old: torch.Tensor, news: list[torch.Tensor], where: tuple[int, str]) -> None:
        """A layer matrix that fits, checkpoint by checkpoint: ΔW_k formed once and its σ_max found while it is
        still in cache. float32 files are read in place: u_k = W_k − W_k−1 straight from the two mappings. Other
        dtypes are upcast straight into ΔW_k's buffer and W_base subtracted in place, and u_k = ΔW_k − ΔW_k−1,
        which is exact: the difference of two bf16/fp16 values is a float32 value, so both ΔW are exact."""
        w = self.work
        base = w.float32("B", old)
        base2 = sum_squares(base)
        if not math.isfinite(base2):
            self.base_nonfinite.append(key)
            return
        in_place = all(t.dtype == torch.float32 for t in news)
        prev, u_prev, start = (base if in_place else None), None, None
        for k, new in enumerate(news):
            if in_place:
                c = w.float32(f"c{k % 2}", new)
                d = torch.sub(c, base, out=w.buffer("D", c.shape))
                u = torch.sub(c, prev, out=w.buffer(f"u{k % 2}", c.shape))
                prev = c
            else:
                d = w.buffer(f"D{k % 2}", base.shape).copy_(new).sub_(base)  # 1.4× faster than a mixed-dtype sub
                u = d if prev is None else torch.sub(d, prev, out=w.buffer(f"u{k % 2}", d.shape))
                prev = d
            move2, fro2 = sum_squares(u), sum_squares(d)
            dot = float(torch.dot(u.view(-1), u_prev.view(-1))) if u_prev is not None else 0.0
            _finite(k, key, move2, fro2, dot)
            self.sums[k].add(where, fro2, base2, move2, dot)
            sigma = None
            if fro2 > 0:
                sigma, start = top_singular(DenseOperator(d), start, rtol=RTOL, block=BLOCK)
            self.sums[k].matrix(where, fro2, base2, sigma)
            u_prev = u  # at k = 0 that is D0 itself, intact until k = 2 overwrites it

    def _tiled(self, key: str, old: torch.Tensor, news: list[torch.Tensor], where: tuple[int, str] | None) -> None:
        """Any other tensor, by tiles that stay in cache, each tile through every checkpoint in turn (so W_k is read
        from memory once); then, for a layer matrix too large to hold, σ_max of each ΔW_k recomputed from the files
        per Lanczos product."""
        w, n = self.work, len(news)
        step = max(1, TILE // old.shape[1])
        fro2, move2, dot = [0.0] * n, [0.0] * n, [0.0] * n
        base2 = 0.0
        for s in range(0, old.shape[0], step):
            b = w.float32("b", old[s : s + step])
            base2 += sum_squares(b)
            prev, u_prev = b, None
            for k in range(n):
                c = w.float32(f"c{k % 2}", news[k][s : s + step])
                u = torch.sub(c, prev, out=w.buffer(f"u{k % 2}", c.shape))
                move2[k] += sum_squares(u)
                if u_prev is not None:
                    dot[k] += float(torch.dot(u.view(-1), u_prev.view(-1)))
                fro2[k] += sum_squares(torch.sub(c, b, out=w.buffer("d", c.shape)))
                prev, u_prev = c, u
        if not math.isfinite(base2):
            self.base_nonfinite.append(key)
            return
        start = None
        for k in range(n):
            _finite(k, key, move2[k], fro2[k], dot[k])
            self.sums[k].add(where, fro2[k], base2, move2[k], dot[k])
            if where is None:
                continue
            sigma = None
            if fro2[k] > 0:
                op = DeltaOperator(old, news[k], None, self.work)
                sigma, start = top_singular(op, start, rtol=RTOL, block=BLOCK)
            self.sums[k].matrix(where, fro2[k], base2, sigma)

    # ----- LoRA checkpoints ---------------------------------------------------------------------------------------
    def lora(self, key: str) -> None:
        old = self.base.get(key)
        pairs: list[LoraPair] = [c.lora_pairs()[key] for c in self.ckpts]
        placement = place(key, tuple(old.shape))
        factors = []
        for k, pair in enumerate(pairs):
            try:
                left, right = pair.left().double(), pair.right().double()
            except ToolError as e:
                raise Dropped(k, e.message) from None
            if not (
                math.isfinite(pair.scale) and bool(torch.isfinite(left).all()) and bool(torch.isfinite(right).all())
            ):
                raise Dropped(k, f"NaN or inf in the LoRA factors or scale of {key}")
            factors.append((pair.scale * left, right))
        for part in placement.parts or (Part("other"),):
            where = _where(placement.section, placement.layer, part)
            if where is not None:
                self.types.add(where[1])
                self.layers.add(where[0])
            base2 = self.work.norm(_columns(old, part)) ** 2
            cols = (lambda r: r) if part.cols is None else (lambda r, c=part.cols: r[:, c[0] : c[1]])
            prev: tuple[torch.Tensor, torch.Tensor] | None = None  # Δ_{k−1} as (left, right)
            u_prev: tuple[torch.Tensor, torch.Tensor] | None = None
            for k, (left, right) in enumerate(factors):
                delta = (left, cols(right))
                u = delta if prev is None else (torch.cat([delta[0], -prev[0]], 1), torch.cat([delta[1], prev[1]], 0))
                spectrum = lowrank_spectrum(delta[0], delta[1], 1.0)
                move2 = lowrank_spectrum(u[0], u[1], 1.0).fro ** 2
                dot = _lowrank_inner(u, u_prev) if u_prev is not None else 0.0
                self.sums[k].add(where, spectrum.fro**2, base2, move2, dot)
                if where is not None:
                    self.sums[k].matrix(where, spectrum.fro**2, base2, spectrum.sigma_max)
                prev, u_prev = delta, u

    # ----- the pass -----------------------------------------------------------------------------------------------
    def run(self, dense_keys: list[str], lora_keys: list[str]) -> Pass:
        work: list[tuple[str, Callable[[str], None]]] = [(k, self.dense) for k in dense_keys]
        work += [(k, self.lora) for k in lora_keys]
        n_files = len(self.ckpts) + 1

        def nbytes(j: int) -> int:
            key, fn = work[j]
            return math.prod(self.base.shape(key)) * 4 * (n_files if fn == self.dense else 1)

        def tensors(j: int) -> list[torch.Tensor]:
            key, fn = work[j]
            extra = [c.mapped(key) for c in self.ckpts] if fn == self.dense else []
            return [self.base.mapped(key), *extra]

        reader = Prefetcher(len(work), nbytes, tensors, window=PREFETCH)
        try:
            with torch_threads(THREADS):
                for i, (key, fn) in enumerate(work):
                    self.reporter.progress(0.05 + 0.9 * i / max(1, len(work)), f"{key} ({i + 1}/{len(work)})")
                    reader.advance(i)
                    fn(key)
        finally:
            reader.close()
        order = {m: i for i, m in enumerate(MATRIX_ORDER)}
        return Pass(
            sums=self.sums,
            keys=len(work),
            matrix_types=sorted(self.types, key=lambda m: order.get(m, len(order))),
            n_layers=max(self.layers) + 1 if self.layers else 0,
            base_nonfinite=self.base_nonfinite,
        )


def _lowrank_inner(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """⟨L₁R₁, L₂R₂⟩_F = Σ (L₁ᵀL₂) ∘ (R₁R₂ᵀ), from r×r products."""
    return float(((a[0].T @ b[0]) * (a[1] @ b[1].T)).sum())
