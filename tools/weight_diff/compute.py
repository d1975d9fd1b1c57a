"""The weight diff itself: stream base and checkpoint tensor by tensor, never two whole models in memory.

For each tensor: read the base tensor and the checkpoint tensor (both file-backed), form ΔW in float32
(in row chunks when large), measure it, drop it. LoRA pairs are measured from their factors.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch

from session.checkpoint_lora import LoraPair
from session.checkpoints import Alignment, CheckpointReader
from tools.weight_diff.layout import MATRIX_ORDER, Part, place
from tools.weight_diff.models import MatrixRow, NonFiniteTensor, TensorRow, TopChange, Totals
from tools.weight_diff.spectral import Spectrum, dense_spectrum, lowrank_spectrum
from toolserver.contract import Reporter

CHUNK_ELEMENTS = 1 << 24  # ΔW is formed at most 16M float32 values (64 MB) at a time
PREFETCH_BYTES = 256 << 20  # how far ahead of the computation the disk reads (page cache, not process memory)
_SAMPLE = 20
_PAGE = 4096


def sum_squares(t: torch.Tensor) -> float:
    """Σ t² summed per row in float32, across rows in float64.

    One float32 reduction over a whole 10M-element ΔW loses ~1e-3 relative on a single thread (measured),
    more than the stable-rank tolerance; rows of a few thousand values keep it near 1e-7 at the same speed.
    """
    rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t
    return float(torch.linalg.vector_norm(rows, dim=-1).double().square().sum())


class Workspace:
    """Reusable float32 buffers for ΔW and the upcast base.

    A fresh 64 MB allocation is mapped anew and page-faulted on every use, which costs as much as the
    arithmetic; reusing two buffers does not. A ΔW handed out stays valid until the next call.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A float32 buffer of this shape, reused (and grown) under its name."""
        n = math.prod(shape)
        if name not in self._buffers or self._buffers[name].numel() < n:
            self._buffers[name] = torch.empty(n, dtype=torch.float32)
        return self._buffers[name][:n].view(shape)

    def float32(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """t as contiguous float32: itself when it already is (a file mapping stays a mapping), else a copy."""
        if t.dtype == torch.float32 and t.is_contiguous():
            return t
        return self.buffer(name, t.shape).copy_(t)

    def delta_and_norms(self, new: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """ΔW = new − old in float32 (the inputs may be read-only file mappings), ‖ΔW‖², ‖old‖²."""
        old32 = old if old.dtype == torch.float32 else self.buffer("old", old.shape).copy_(old)
        delta = self.buffer("delta", new.shape).copy_(new).sub_(old32)
        return delta, sum_squares(delta), sum_squares(old32)

    def norm(self, t: torch.Tensor) -> float:
        """‖t‖_F in float32, upcasting at most CHUNK_ELEMENTS values at a time."""
        if t.dtype == torch.float32:
            return math.sqrt(sum_squares(t))
        rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
        step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
        return math.sqrt(
            sum(
                sum_squares(self.buffer("old", rows[s : s + step].shape).copy_(rows[s : s + step]))
                for s in range(0, rows.shape[0], step)
            )
        )


class DeltaOperator:
    """ΔW = new − old (optionally a column range) with its Frobenius norm and the base's.

    Kept in memory when it fits in CHUNK_ELEMENTS: whole, or as its non-zero rows only (an embedding
    fine-tuned on a few tokens changes only their rows; zero rows add nothing to the norms or singular
    values). Otherwise it is recomputed per row chunk for every product, so memory stays bounded.
    Valid until the workspace is used for the next tensor.
    """

    def __init__(
        self,
        old: torch.Tensor,
        new: torch.Tensor,
        cols: tuple[int, int] | None = None,
        workspace: Workspace | None = None,
    ) -> None:
        old, new = old.reshape(old.shape[0], -1), new.reshape(new.shape[0], -1)
        if cols is not None:
            old, new = old[:, cols[0] : cols[1]], new[:, cols[0] : cols[1]]
        self.old, self.new = old, new
        self.work = workspace or Workspace()
        self.full_shape = (old.shape[0], old.shape[1])
        self.rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, self.full_shape[1]))
        kept: list[torch.Tensor] | None = []
        kept_rows = 0
        fro2 = base2 = 0.0
        for start in range(0, self.full_shape[0], self.rows_per_chunk):
            stop = start + self.rows_per_chunk
            delta, d2, b2 = self.work.delta_and_norms(new[start:stop], old[start:stop])
            fro2, base2 = fro2 + d2, base2 + b2
            if kept is not None:
                rows = delta if stop >= self.full_shape[0] and start == 0 else delta[delta.ne(0).any(dim=1)]
                kept_rows += rows.shape[0]
                kept = kept + [rows] if kept_rows <= self.rows_per_chunk else None
        self._kept = torch.cat(kept) if kept is not None and len(kept) > 1 else (kept[0] if kept else None)
        self.fro, self.base_fro = math.sqrt(fro2), math.sqrt(base2)
        # the matrix the products act on: the kept rows of ΔW, or all of it
        self.shape = (self._kept.shape[0], self.full_shape[1]) if self._kept is not None else self.full_shape

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self._kept is not None:
            yield 0, self._kept
            return
        for start in range(0, self.full_shape[0], self.rows_per_chunk):
            stop = start + self.rows_per_chunk
            yield start, self.work.delta_and_norms(self.new[start:stop], self.old[start:stop])[0]

    def mm(self, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([d @ v for _, d in self.chunks()])

    def rmm(self, y: torch.Tensor) -> torch.Tensor:
        # (yᵀ d)ᵀ rather than dᵀ y: the latter hits a slow path for thin y in some BLAS builds
        return sum(((y[s : s + d.shape[0]].T @ d).T for s, d in self.chunks()), torch.zeros(self.shape[1], y.shape[1]))


@dataclass
class Measured:
    """One measured matrix or vector before it is placed in the report."""

    key: str
    section: str
    layer: int | None
    matrix: str | None
    shape: tuple[int, ...]
    fro: float
    base_fro: float
    spectrum: Spectrum | None
    lora_rank: int | None = None

    @property
    def rel(self) -> float | None:
        """‖ΔW‖/‖W‖; None when the base tensor is all zeros (e.g. a zero-initialised bias)."""
        return self.fro / self.base_fro if self.base_fro > 0 else None


def _bad(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def _count_nonfinite(key: str, old: torch.Tensor, new: torch.Tensor | None, pair: LoraPair | None) -> NonFiniteTensor:
    """Where the NaN/inf are (one more pass, only over a tensor already known to hold some)."""
    if pair is None:
        assert new is not None
        return NonFiniteTensor(key=key, numel=new.numel(), checkpoint=_bad(new), base=_bad(old))
    a, b = pair.left(), pair.right()
    note = None if math.isfinite(pair.scale) else f"LoRA scale is {pair.scale} (lora_alpha {pair.alpha}, r {pair.rank})"
    return NonFiniteTensor(
        key=key, numel=a.numel() + b.numel(), checkpoint=_bad(a) + _bad(b), base=_bad(old), note=note
    )


@dataclass
class Collected:
    measured: list[Measured] = field(default_factory=list)
    nonfinite: list[NonFiniteTensor] = field(default_factory=list)
    compared: int = 0
    unchanged: int = 0
    skipped_non_float: list[str] = field(default_factory=list)


class NonFiniteValues(Exception):
    """A tensor (or LoRA factor, or scale) holds NaN or inf: it is counted and named, never measured."""


def _finite(*values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise NonFiniteValues


def _measure_dense(key: str, old: torch.Tensor, new: torch.Tensor, work: Workspace) -> list[Measured]:
    placement = place(key, tuple(old.shape))
    if old.dim() < 2:
        _, fro2, base2 = work.delta_and_norms(new, old)
        _finite(fro2, base2)
        return [Measured(key, placement.section, None, None, tuple(old.shape), math.sqrt(fro2), math.sqrt(base2), None)]
    out = []
    for part in placement.parts or (Part("other"),):
        op = DeltaOperator(old, new, part.cols, work)
        _finite(op.fro, op.base_fro)  # a NaN or inf anywhere makes the sums non-finite: no σ_max is attempted
        matrix = part.matrix if placement.section == "layer" else None
        out.append(
            Measured(key, placement.section, placement.layer, matrix, op.full_shape, op.fro, op.base_fro, _spectrum(op))
        )
    return out


def _spectrum(op: DeltaOperator) -> Spectrum:
    """σ_max on two torch threads: its products are the diff's heaviest compute."""
    with torch_threads(2):
        return dense_spectrum(op, op.fro)


def _measure_lora(key: str, pair: LoraPair, old: torch.Tensor, work: Workspace) -> list[Measured]:
    placement = place(key, tuple(old.shape))
    left, right = pair.left(), pair.right()
    if not (math.isfinite(pair.scale) and bool(torch.isfinite(left).all()) and bool(torch.isfinite(right).all())):
        raise NonFiniteValues
    out = []
    for part in placement.parts or (Part("other"),):
        r, w = (
            (right, old)
            if part.cols is None
            else (right[:, part.cols[0] : part.cols[1]], old[:, part.cols[0] : part.cols[1]])
        )
        spectrum = lowrank_spectrum(left, r, pair.scale)
        base_norm = work.norm(w)
        _finite(base_norm)
        matrix = part.matrix if placement.section == "layer" else None
        out.append(
            Measured(
                key,
                placement.section,
                placement.layer,
                matrix,
                (w.shape[0], w.shape[1]),
                spectrum.fro,
                base_norm,
                spectrum,
                lora_rank=pair.rank,
            )
        )
    return out


_MADV_POPULATE_READ = 22  # Linux ≥ 5.14


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


def _populate(t: torch.Tensor) -> bool:
    """Read a file-mapped tensor's pages in and map them, in one madvise(MADV_POPULATE_READ): the kernel fills
    the page tables in bulk, where faulting page by page costs ~1 µs a page (measured: 2 s of CPU per 5 GB cold)
    and the computation that reads the tensor next takes no faults either. False where the kernel lacks it."""
    libc = _libc()
    if libc is None:
        return False
    start = t.data_ptr() & ~(_PAGE - 1)
    end = t.data_ptr() + t.numel() * t.element_size()
    return libc.madvise(start, end - start, _MADV_POPULATE_READ) == 0


def _touch(t: torch.Tensor) -> None:
    """Fault in every page behind a file-mapped tensor: populated by the kernel where it can, else one strided
    byte read per page, 16 MB per op so it stays on the calling thread (below torch's intra-op grain size) and
    never copies the tensor."""
    if not t.is_contiguous() or t.numel() == 0 or _populate(t):
        return
    raw = t.reshape(-1).view(torch.uint8)
    for s in range(0, raw.numel(), 1 << 24):
        raw[s : s + (1 << 24) : _PAGE].sum()


def _touch_all(tensors: list[torch.Tensor]) -> None:
    for t in tensors:
        _touch(t)


class Prefetcher:
    """Reads upcoming tensors from disk in a background thread while the current one is computed.

    A page-touching thread, rather than madvise alone, because the kernel's readahead for WILLNEED stops
    short of whole tensors; torch ops release the GIL, so the reads overlap the computation. The pages
    land in the page cache (file-backed), so the PREFETCH_BYTES window costs no process memory.
    Item j's tensors are `tensors(j)`, taking about `nbytes(j)` of computation memory.
    """

    def __init__(
        self,
        n: int,
        nbytes: Callable[[int], int],
        tensors: Callable[[int], list[torch.Tensor]],
        window: int = PREFETCH_BYTES,
    ) -> None:
        self.n, self.nbytes, self.tensors, self.window = n, nbytes, tensors, window
        self.ahead = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights-read")

    def advance(self, current: int) -> None:
        """Queue reads of the items after `current` that fit in the window and are not queued yet."""
        window = 0
        for j in range(current + 1, self.n):
            window += self.nbytes(j)
            if window > self.window:
                break
            if j > self.ahead:
                self.pool.submit(_touch_all, self.tensors(j))
                self.ahead = j

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def pair_prefetcher(
    base: CheckpointReader, ckpt: CheckpointReader, work: list[tuple[str, LoraPair | None]]
) -> Prefetcher:
    def nbytes(j: int) -> int:
        key, pair = work[j]
        return math.prod(base.shape(key)) * (1 if pair is not None else 2) * 4

    def tensors(j: int) -> list[torch.Tensor]:
        key, pair = work[j]
        return [base.mapped(key)] + ([ckpt.mapped(key)] if pair is None and key in ckpt else [])

    return Prefetcher(len(work), nbytes, tensors)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on n threads inside the block, restoring the process-wide setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_thread() -> AbstractContextManager[None]:
    """One torch thread: with two, any preemption of one (the kernel reading the next tensor from disk,
    another process) stalls every product at the barrier."""
    return torch_threads(1)


def collect(base: CheckpointReader, ckpt: CheckpointReader, aligned: Alignment, reporter: Reporter) -> Collected:
    """Measure every common tensor and every LoRA pair, one at a time, reporting progress per tensor."""
    with single_thread():
        return _collect(base, ckpt, aligned, reporter)


def _collect(base: CheckpointReader, ckpt: CheckpointReader, aligned: Alignment, reporter: Reporter) -> Collected:
    pairs = ckpt.lora_pairs()
    work = [(k, None) for k in aligned.common] + list(pairs.items())
    out = Collected()
    workspace = Workspace()
    reader = pair_prefetcher(base, ckpt, work)
    try:
        for i, (key, pair) in enumerate(work):
            reporter.progress(0.05 + 0.9 * i / max(1, len(work)), f"comparing {key} ({i + 1}/{len(work)})")
            reader.advance(i)
            old = base.get(key)
            new = ckpt.get(key) if pair is None else None
            if new is not None and not (old.is_floating_point() and new.is_floating_point()):
                out.skipped_non_float.append(key)
                continue
            try:
                measured = (
                    _measure_lora(key, pair, old, workspace)
                    if pair is not None
                    else _measure_dense(key, old, new, workspace)
                )
            except NonFiniteValues:
                out.nonfinite.append(_count_nonfinite(key, old, new, pair))
                continue
            out.compared += 1
            out.unchanged += all(m.fro == 0 for m in measured)
            out.measured.extend(measured)
    finally:
        reader.close()
    return out


def matrix_rows(collected: Collected) -> list[MatrixRow]:
    rows = [
        MatrixRow(
            layer=m.layer,
            matrix=m.matrix,
            keys=[m.key],
            shape=list(m.shape),
            fro_delta=m.fro,
            rel_delta=m.rel,
            stable_rank=m.spectrum.stable_rank,
            sigma_max=m.spectrum.sigma_max,
            lora_rank=m.lora_rank,
        )
        for m in collected.measured
        if m.section == "layer" and m.spectrum is not None and m.layer is not None and m.matrix
    ]
    order = {name: i for i, name in enumerate(MATRIX_ORDER)}
    return sorted(rows, key=lambda r: (r.layer, order.get(r.matrix, len(order)), r.keys[0]))


def tensor_rows(collected: Collected, groups: tuple[str, ...]) -> list[TensorRow]:
    return [
        TensorRow(
            key=m.key,
            group=m.section,
            shape=list(m.shape),
            fro_delta=m.fro,
            rel_delta=m.rel,  # type: ignore[arg-type]
            stable_rank=m.spectrum.stable_rank if m.spectrum else None,
            sigma_max=m.spectrum.sigma_max if m.spectrum else None,
        )
        for m in collected.measured
        if m.section in groups
    ]


def top_changed(collected: Collected, k: int) -> list[TopChange]:
    matrices = [m for m in collected.measured if m.spectrum is not None and m.fro > 0 and m.rel is not None]
    matrices.sort(key=lambda m: m.rel or 0.0, reverse=True)
    return [
        TopChange(
            label=f"layer {m.layer} {m.matrix}" if m.layer is not None else m.key,
            key=m.key,
            rel_delta=m.rel or 0.0,
            fro_delta=m.fro,
            stable_rank=m.spectrum.stable_rank if m.spectrum else None,
        )
        for m in matrices[:k]
    ]


def totals(collected: Collected, aligned: Alignment) -> Totals:
    fro2 = sum(m.fro**2 for m in collected.measured)
    base2 = sum(m.base_fro**2 for m in collected.measured)
    return Totals(
        tensors_compared=collected.compared,
        unchanged=collected.unchanged,
        fro_delta=math.sqrt(fro2),
        rel_delta=math.sqrt(fro2 / base2) if base2 > 0 else 0.0,
        only_in_base=len(aligned.only_in_base),
        only_in_checkpoint=len(aligned.only_in_checkpoint),
        only_in_base_keys=aligned.only_in_base[:_SAMPLE],
        only_in_checkpoint_keys=aligned.only_in_checkpoint[:_SAMPLE],
        tied=aligned.tied,
        skipped_non_float=collected.skipped_non_float,
        nonfinite=len(collected.nonfinite),
    )
