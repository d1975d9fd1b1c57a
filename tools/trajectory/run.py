"""run_trajectory_analysis's run: find the checkpoints, order them by step, measure them all in one pass."""

from __future__ import annotations

import math
from contextlib import ExitStack

from session.checkpoints import CheckpointReader, open_checkpoint
from session.context import ToolContext
from tools.trajectory.compute import RTOL, Dropped, Pass, Stream
from tools.trajectory.discover import Found, candidates, survey
from tools.trajectory.models import Point, TrajectoryInput, TrajectoryResult
from tools.trajectory.report import analyse, findings, follow_ups
from toolserver.contract import Outcome, Reporter, ToolError

_SAMPLE = 20


def _keys(base: CheckpointReader, ckpts: list[CheckpointReader]) -> tuple[list[str], list[str], list[str]]:
    """(dense keys, LoRA targets) in every checkpoint, and the keys some checkpoints lack."""
    dense = [k for k in base.keys() if all(k in c for c in ckpts)]
    some = {k for c in ckpts for k in c.keys() if k in base} - set(dense)
    lora = [k for k in ckpts[0].lora_pairs() if all(k in c.lora_pairs() for c in ckpts)]
    some |= {k for c in ckpts for k in c.lora_pairs()} - set(lora)
    return dense, lora, sorted(some)


def _measure(base: CheckpointReader, chosen: list[Found], reporter: Reporter) -> tuple[Pass, list[str]]:
    ckpts = [f.reader for f in chosen if f.reader is not None]
    dense, lora, partial = _keys(base, ckpts)
    return Stream(base, ckpts, reporter).run(dense, lora), partial


def _points(chosen: list[Found], done: Pass, prefix: str | None) -> list[Point]:
    points: list[Point] = []
    prev_step = 0
    for k, (f, s) in enumerate(zip(chosen, done.sums, strict=True)):
        step = f.entry.step or 0
        prev = done.sums[k - 1] if k else None

        def cos(dot: float, a: float, b: float | None) -> float | None:
            return dot / math.sqrt(a * b) if b and a > 0 else None

        movement = math.sqrt(s.move2)
        points.append(
            Point(
                label=f"{prefix}@{step}" if prefix else f"step {step}",
                step=step,
                path=f.entry.path,
                fro_delta=math.sqrt(s.fro2),
                rel_delta=math.sqrt(s.fro2 / s.base2) if s.base2 > 0 else 0.0,
                by_type={
                    m: math.sqrt(s.type_fro2[m] / s.type_base2[m]) if s.type_base2.get(m) else None
                    for m in done.matrix_types
                },
                by_layer=[
                    math.sqrt(s.layer_fro2[i] / s.layer_base2[i]) if s.layer_base2.get(i) else None
                    for i in range(done.n_layers)
                ],
                median_stable_rank=s.median_stable_rank(),
                top_changed=s.top[1] if s.top else None,
                top_rel=s.top[0] if s.top else None,
                movement=movement,
                movement_per_step=movement / max(1, step - prev_step),
                movement_by_type={m: math.sqrt(s.type_move2.get(m, 0.0)) for m in done.matrix_types},
                update_cosine=cos(s.dot, s.move2, prev.move2 if prev else None),
                cosine_by_type={
                    m: cos(s.type_dot.get(m, 0.0), s.type_move2.get(m, 0.0), prev.type_move2.get(m) if prev else None)
                    for m in done.matrix_types
                },
            )
        )
        prev_step = step
    return points


def run(ctx: ToolContext, args: TrajectoryInput, reporter: Reporter) -> Outcome[TrajectoryResult]:
    base_dir = ctx.base_dir()
    source, paths = candidates(args)
    reporter.progress(0.0, f"opening {len(paths)} checkpoints")
    with ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(base_dir))
        found = survey(paths, base, stack)
        while True:
            chosen = [f for f in found if f.entry.status == "analysed"]
            if not chosen:
                reasons = "; ".join(f"{f.entry.path}: {f.entry.status}" for f in found[:3])
                raise ToolError(f"none of the {len(found)} checkpoints found in {source} can be analysed ({reasons})")
            try:
                done, partial = _measure(base, chosen, reporter)
            except Dropped as d:  # rare (a damaged tensor, NaN): measure again without it, so no sum mixes it in
                chosen[d.index].entry.status, chosen[d.index].entry.reason = "unreadable", d.reason
                continue
            break
        mode = chosen[0].reader.kind if chosen[0].reader else "full"
    points = _points(chosen, done, args.name)
    result = TrajectoryResult(
        source=source,
        base=str(base_dir),
        mode=mode,
        entries=[f.entry for f in found],
        points=points,
        matrix_types=done.matrix_types,
        n_layers=done.n_layers,
        keys_compared=done.keys,
        keys_not_everywhere=partial[:_SAMPLE],
        stable_rank_rtol=RTOL,
        **analyse(points, done.n_layers, args),
    )
    reporter.progress(1.0, f"measured {len(points)} checkpoints")
    return Outcome(result=result, findings=findings(result, done.base_nonfinite), follow_ups=follow_ups(result))
