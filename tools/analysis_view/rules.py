"""The 004 gradient-triage rules over a run's frames, each a pure function returning its hits with the numbers
that decided them. Every rule compares one computed ratio or share with its threshold (≥ or ≤ as stated), so a
value exactly at the threshold fires."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Literal

from tools.analysis_view.compute import Depth, head_label, heads, is_exact, layer_of, sig
from tools.analysis_view.frames import Frame
from tools.analysis_view.models import (
    AnalysisViewInput,
    Clipping,
    Collapse,
    Growth,
    NonFinite,
    Pinch,
    Rules,
    Still,
    Vanishing,
)
from tools.watch.analysis_schema import Movement

AT_CLIP = 1e-3  # a global norm this close (relative) to the clip was recorded after clipping


def rules(args: AnalysisViewInput) -> Rules:
    return Rules(
        vanishing=f"median per-layer grad norm of the last third of layers / that of the first third ≥ "
        f"{args.vanishing_ratio:g} at a checkpoint (thirds of the layers with gradients; at least one layer each)",
        pinch=f"the largest drop between adjacent layers, grad norm of layer L+1 / that of layer L, ≥ "
        f"{args.pinch_drop:g}: the flow is blocked at layer L",
        clipping=f"global grad norm √Σ‖g_p‖² > grad_clip in ≥ {args.clip_fraction:g} of the checkpoints, and one "
        f"parameter holds the largest share of the squared norm in ≥ {args.clip_fraction:g} of those",
        collapse=f"a head's entropy ≤ {args.collapse_fraction:g} × its first value at a checkpoint within the first "
        f"{args.collapse_window:g} of the recorded step range",
        still=f"a trainable parameter whose movement from the reference is ≤ {args.still:g} at every later checkpoint "
        "(relative ‖w − w_ref‖ / ‖w_ref‖; the RMS of w − w_ref where ‖w_ref‖ = 0)",
        growth=f"a module's output std at its last checkpoint ≥ {args.activation_growth:g} × that at its first",
    )


def vanishing(frames: list[Frame], depths: list[Depth], threshold: float) -> Vanishing | None:
    """The checkpoint with the largest ratio, and how many reach the threshold (None: no checkpoint has
    gradients in two layers)."""
    seen: list[tuple[float, int, list[int], list[int]]] = []
    for f, d in zip(frames, depths, strict=True):
        present = [(i, v) for i, v in enumerate(d.layers) if v is not None]
        if len(present) < 2:
            continue
        k = max(1, len(present) // 3)
        first, last = present[:k], present[-k:]
        lo, hi = statistics.median(v for _, v in first), statistics.median(v for _, v in last)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= 0:
            continue
        seen.append((hi / lo if lo > 0 else math.inf, f.step, [i for i, _ in first], [i for i, _ in last]))
    if not seen:
        return None
    hits = sorted(step for ratio, step, _, _ in seen if ratio >= threshold)
    ratio, step, first_layers, last_layers = max(seen, key=lambda h: (h[0], -h[1]))
    return Vanishing(
        ratio=sig(ratio),
        step=step,
        first_third=first_layers,
        last_third=last_layers,
        checkpoints=len(hits),
        of=len(seen),
        steps=hits[:20],
    )


def pinch(frames: list[Frame], depths: list[Depth], threshold: float) -> Pinch | None:
    """Where the largest adjacent drop sits: among the checkpoints that reach the threshold, the layer most often
    at their largest drop; when none does, the single largest drop (checkpoints = 0)."""
    seen: list[tuple[float, int, int, float, float]] = []  # per checkpoint its largest (drop, step, layer, ...)
    for f, d in zip(frames, depths, strict=True):
        best: tuple[float, int, int, float, float] | None = None
        for layer in range(len(d.layers) - 1):
            above, below = d.layers[layer + 1], d.layers[layer]
            if above is None or below is None or not (math.isfinite(above) and math.isfinite(below)) or above <= 0:
                continue
            drop = above / below if below > 0 else math.inf
            if best is None or drop > best[0]:
                best = (drop, f.step, layer, above, below)
        if best is not None:
            seen.append(best)
    if not seen:
        return None
    hits = [h for h in seen if h[0] >= threshold]
    where = Counter(h[2] for h in hits).most_common(1)[0][0] if hits else None
    at = [h for h in hits if h[2] == where] or seen
    drop, step, layer, above, below = max(at, key=lambda h: (h[0], -h[1]))
    return Pinch(
        layer=layer,
        drop=sig(drop),
        step=step,
        above=sig(above) or 0.0,
        below=sig(below) or 0.0,
        checkpoints=len(at) if hits else 0,
        of=len(seen),
    )


def clipping(
    frames: list[Frame],
    depths: list[Depth],
    clip: float,
    source: Literal["input", "checkpoints"],
    fraction: float,
) -> Clipping | None:
    rows = [(f, d) for f, d in zip(frames, depths, strict=True) if f.grad and math.isfinite(d.total)]
    if not rows:
        return None
    clipped = [(f, d) for f, d in rows if d.total > clip]
    tops = []
    for f, d in clipped:
        name, norm = max(f.grad.items(), key=lambda nv: nv[1])  # the largest norm holds the largest share
        tops.append((name, norm * norm / (d.total * d.total)))
    top, count = Counter(n for n, _ in tops).most_common(1)[0] if tops else (None, 0)
    at_clip = sum(1 for _, d in rows if abs(d.total - clip) <= AT_CLIP * clip)
    post_clip = at_clip >= 2 and 2 * at_clip >= len(rows)
    return Clipping(
        grad_clip=clip,
        source=source,
        clipped=len(clipped),
        of=len(rows),
        at_clip=at_clip,
        post_clip=post_clip,
        top=top,
        top_count=count,
        top_share=sig(statistics.fmean(s for n, s in tops if n == top)) if tops else None,
        dominated=not post_clip
        and bool(clipped)
        and len(clipped) / len(rows) >= fraction
        and count / len(clipped) >= fraction,
    )


def collapsed(frames: list[Frame], fraction: float, window: float) -> list[Collapse]:
    end = frames[0].step + window * (frames[-1].step - frames[0].step)
    first: dict[tuple[str, int], float] = {}
    out: dict[tuple[str, int], Collapse] = {}
    for f in frames:
        for key, values in f.entropy.items():
            for h, v in enumerate(values):
                e0 = first.setdefault((key, h), v)
                if (key, h) in out or f.step > end or not (math.isfinite(v) and math.isfinite(e0)) or e0 <= 0:
                    continue
                if v / e0 <= fraction:
                    out[(key, h)] = Collapse(head=head_label(key, h), first=e0, value=v, step=f.step, window_end=end)
    order = {kh: i for i, kh in enumerate(heads(frames))}
    return [out[kh] for kh in sorted(out, key=lambda kh: (out[kh].step, order[kh]))]


def still(
    frames: list[Frame], shapes: dict[str, list[int]], movement: Movement | None, threshold: float
) -> list[Still]:
    if movement is None:
        return []
    after = [f for f in frames if f.step > movement.reference_step]
    if not after:
        return []
    last = after[-1]
    tracked = {n for f in frames for n in (*f.moved, *f.moved_rms)}
    out = []
    for name in (n for n in shapes if n in tracked and last.moved.get(n, last.moved_rms.get(n, 0.0)) <= threshold):
        values = [v for f in after if (v := f.moved.get(name, f.moved_rms.get(name))) is not None]
        if not values or not all(math.isfinite(v) for v in values) or max(values) > threshold:
            continue
        grads = [f.grad[name] for f in frames if name in f.grad]
        status: Literal["none", "zero", "nonzero"] = (
            "none" if not grads else "zero" if all(g == 0 for g in grads) else "nonzero"
        )
        out.append(
            Still(
                name=name,
                layer=layer_of(name),
                largest=max(values),
                gradient=status,
                exact=is_exact(shapes[name], movement),
            )
        )
    return out


def grown(frames: list[Frame], factor: float) -> list[Growth]:
    spans: dict[str, tuple[tuple[int, float], tuple[int, float]]] = {}
    for f in frames:
        for module, (_, std, _) in f.activations.items():
            if not math.isfinite(std):
                continue
            start = spans[module][0] if module in spans else (f.step, std)
            spans[module] = (start, (f.step, std))
    out = [
        Growth(module=m, first=s0, last=s1, ratio=sig(s1 / s0) or 0.0, first_step=t0, last_step=t1)
        for m, ((t0, s0), (t1, s1)) in spans.items()
        if s0 > 0 and t1 > t0 and s1 / s0 >= factor
    ]
    return sorted(out, key=lambda g: -g.ratio)


def nonfinite(frames: list[Frame], depths: list[Depth]) -> list[NonFinite]:
    out = []
    for f, d in zip(frames, depths, strict=True):
        if math.isfinite(d.total):  # √Σ‖g‖² is finite only when every norm is
            continue
        bad = [n for n, v in f.grad.items() if not math.isfinite(v)]
        if bad:  # (none: a sum of squares that overflowed)
            out.append(NonFinite(step=f.step, params=bad[:5], count=len(bad)))
    return out
