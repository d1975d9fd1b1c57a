"""The viewer's views of a run, as pure functions of its frames: per-layer gradient norms and the waterfall,
heatmaps over time (evenly spaced checkpoints, capped in cells), the movement ranking and per-layer movement,
attention entropy per head, activation statistics per module, the sampled grids of one tensor."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache

from tools.analysis_view.frames import Frame
from tools.analysis_view.models import (
    Activations,
    ActivationSeries,
    AttentionView,
    Grids,
    HeadValue,
    Heatmap,
    MovedParam,
    NamedNorm,
    Timeline,
    WaterfallStep,
)
from tools.watch.analysis_schema import AnalysisCheckpoint, Movement

_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks)\.(\d+)(?=\.|$)")
_LAST = 1 << 30  # sorts names outside the blocks after them


@cache
def layer_of(name: str) -> int | None:
    """The transformer block a parameter or module belongs to: transformer.h.3., model.layers.3., blocks.3.,
    encoder.layer.3. (None: outside the blocks — embeddings, final norm, head)."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def depth_order(name: str) -> tuple[int, str]:
    layer = layer_of(name)
    return (_LAST if layer is None else layer, name)


def sig(x: float | None, digits: int = 4) -> float | None:
    """A result's number: 4 significant digits, None when missing or not finite."""
    return float(f"{x:.{digits}g}") if x is not None and math.isfinite(x) else None


def spread(n: int, k: int) -> list[int]:
    """min(n, k) evenly spaced indices into range(n), the first and the last included (one: the last)."""
    k = min(n, k)
    if k <= 1:
        return [n - 1] if k == 1 else []
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def fit(columns: int, rows: int, max_cells: int) -> int:
    """Columns for a heatmap of `rows` rows within `max_cells` cells."""
    return max(1, min(columns, max_cells // max(rows, 1)))


def n_layers(names: list[str]) -> int:
    return 1 + max((layer for n in names if (layer := layer_of(n)) is not None), default=-1)


@dataclass(frozen=True, slots=True)
class Depth:
    """One checkpoint's gradient across depth."""

    layers: list[float | None]  # √Σ‖g_p‖² per block; None: no gradient of the block recorded
    outside: dict[str, float]  # parameters outside the blocks
    total: float  # the global norm √Σ‖g_p‖²


def depth(grad: dict[str, float], layers: int) -> Depth:
    sums = [0.0] * layers
    seen = [False] * layers
    outside = {}
    for name, norm in grad.items():
        layer = layer_of(name)
        if layer is None:
            outside[name] = norm
        else:
            sums[layer] += norm * norm
            seen[layer] = True
    total = math.sqrt(math.fsum(v * v for v in grad.values()))
    return Depth([math.sqrt(s) if seen[i] else None for i, s in enumerate(sums)], outside, total)


def default_waterfall(frames: list[Frame], n: int = 6) -> list[int]:
    """Up to n checkpoints (indices): the first, the last, triggered ones evenly spread among themselves, then
    each next one the farthest in steps from those already chosen."""
    picks = {0, len(frames) - 1}
    triggered = [i for i, f in enumerate(frames) if f.triggered]
    picks |= {triggered[j] for j in spread(len(triggered), n - len(picks))}
    while len(picks) < min(n, len(frames)):
        chosen = [frames[i].step for i in picks]
        picks.add(
            max(
                (i for i in range(len(frames)) if i not in picks),
                key=lambda i: min(abs(frames[i].step - s) for s in chosen),
            )
        )
    return sorted(picks)


def waterfall(frames: list[Frame], depths: list[Depth], picks: list[int]) -> list[WaterfallStep]:
    return [
        WaterfallStep(
            step=frames[i].step,
            reasons=frames[i].reasons,
            layers=[sig(v) for v in depths[i].layers],
            outside=[NamedNorm(name=n, norm=sig(v)) for n, v in depths[i].outside.items()],
            grad_norm=sig(depths[i].total) if frames[i].grad else None,
        )
        for i in picks
    ]


def timeline(frames: list[Frame], depths: list[Depth], cols: list[int]) -> Timeline:
    return Timeline(
        steps=[frames[i].step for i in cols],
        loss=[sig(frames[i].loss) for i in cols],
        grad_norm=[sig(depths[i].total) if frames[i].grad else None for i in cols],
    )


def grad_heatmap(frames: list[Frame], depths: list[Depth], layers: int, cols: list[int]) -> Heatmap:
    return Heatmap(
        rows=[f"L{i}" for i in range(layers)],
        steps=[frames[j].step for j in cols],
        values=[[sig(depths[j].layers[i]) for j in cols] for i in range(layers)],
    )


def is_exact(shape: list[int], movement: Movement) -> bool:
    return movement.sample == 0 or math.prod(shape) <= movement.sample


def movement_top(frame: Frame, shapes: dict[str, list[int]], movement: Movement, top: int) -> list[MovedParam]:
    ranked = sorted(((v, n) for n, v in frame.moved.items() if math.isfinite(v)), key=lambda vn: (-vn[0], vn[1]))
    return [
        MovedParam(
            name=name,
            layer=layer_of(name),
            moved=value,
            exact=is_exact(shapes.get(name, []), movement),
            grad_norm=sig(frame.grad.get(name)),
        )
        for value, name in ranked[:top]
    ]


def layer_movement(
    frame: Frame, shapes: dict[str, list[int]], ref_norms: dict[str, float], layers: int
) -> list[float | None]:
    """Per block √Σ‖Δw_p‖² / √Σ‖w_ref,p‖² over its tracked parameters, ‖Δw_p‖ = moved × ‖w_ref‖ (or, where
    ‖w_ref‖ = 0, moved_rms × √numel)."""
    delta2, base2 = [0.0] * layers, [0.0] * layers
    for name, ref in ref_norms.items():
        layer = layer_of(name)
        if layer is None:
            continue
        if name in frame.moved:
            delta = frame.moved[name] * ref
        elif name in frame.moved_rms:
            delta = frame.moved_rms[name] * math.sqrt(math.prod(shapes[name]))
        else:
            continue
        delta2[layer] += delta * delta
        base2[layer] += ref * ref
    return [math.sqrt(d / b) if b > 0 else None for d, b in zip(delta2, base2, strict=True)]


def movement_heatmap(
    frames: list[Frame], shapes: dict[str, list[int]], ref_norms: dict[str, float], layers: int, cols: list[int]
) -> Heatmap:
    per_column = [layer_movement(frames[j], shapes, ref_norms, layers) for j in cols]
    return Heatmap(
        rows=[f"L{i}" for i in range(layers)],
        steps=[frames[j].step for j in cols],
        values=[[sig(column[i]) for column in per_column] for i in range(layers)],
    )


def head_label(key: str, head: int) -> str:
    layer = layer_of(key)
    return f"L{layer}.h{head}" if layer is not None else f"{key}.h{head}"


def heads(frames: list[Frame]) -> list[tuple[str, int]]:
    """Every (attention key, head) recorded, in depth order."""
    width: dict[str, int] = {}
    for f in frames:
        for key, values in f.entropy.items():
            width[key] = max(width.get(key, 0), len(values))
    return [(key, h) for key in sorted(width, key=depth_order) for h in range(width[key])]


def _at(values: dict[str, list[float]], key: str, head: int) -> float | None:
    row = values.get(key)
    return row[head] if row is not None and head < len(row) else None


def attention_view(frames: list[Frame], columns: int, max_cells: int) -> AttentionView | None:
    rows = heads(frames)
    with_attention = [i for i, f in enumerate(frames) if f.entropy]
    if not rows:
        return None
    cols = [with_attention[j] for j in spread(len(with_attention), fit(columns, len(rows), max_cells))]
    last = frames[with_attention[-1]]
    return AttentionView(
        entropy=Heatmap(
            rows=[head_label(k, h) for k, h in rows],
            steps=[frames[j].step for j in cols],
            values=[[sig(_at(frames[j].entropy, k, h)) for j in cols] for k, h in rows],
        ),
        max_attn=[HeadValue(head=head_label(k, h), value=sig(_at(last.max_attn, k, h))) for k, h in rows],
        max_attn_step=last.step,
    )


def activation_view(frames: list[Frame], columns: int, max_cells: int) -> Activations | None:
    modules = sorted({m for f in frames for m in f.activations}, key=depth_order)
    with_acts = [i for i, f in enumerate(frames) if f.activations]
    if not modules:
        return None
    cols = [with_acts[j] for j in spread(len(with_acts), fit(columns, 3 * len(modules), max_cells))]

    def stat(module: str, k: int) -> list[float | None]:
        return [sig(a[k]) if (a := frames[j].activations.get(module)) else None for j in cols]

    return Activations(
        steps=[frames[j].step for j in cols],
        modules=[
            ActivationSeries(module=m, layer=layer_of(m), mean=stat(m, 0), std=stat(m, 1), sparsity=stat(m, 2))
            for m in modules
        ],
    )


def gridded(ck: AnalysisCheckpoint) -> list[str]:
    return [name for name, w in ck.weights.items() if w.grid is not None]


def most_moved_gridded(ck: AnalysisCheckpoint) -> str | None:
    names = gridded(ck)
    moved = [(ck.weights[n].moved, n) for n in names if ck.weights[n].moved is not None]
    return max(moved)[1] if moved else names[0] if names else None


def grids_view(ck: AnalysisCheckpoint, tensor: str) -> Grids:
    weight = ck.weights[tensor]
    grad = ck.gradients.get(tensor)
    return Grids(
        tensor=tensor,
        step=ck.step,
        shape=weight.shape,
        weight=weight.grid or [],
        gradient=grad.grid if grad is not None else None,
        moved=weight.moved,
        gridded=gridded(ck),
    )
