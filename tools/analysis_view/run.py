"""run_analysis_view's run: read the folder once (light digests), build the views and the triage rules from the
frames, and read the one checkpoint whose grids are shown in full."""

from __future__ import annotations

from pathlib import Path

from session.context import ToolContext
from tools.analysis_view import compute, rules
from tools.analysis_view.frames import Frame, Run
from tools.analysis_view.models import MAX_CELLS, AnalysisViewInput, AnalysisViewResult, Grids, Skipped, Trigger
from tools.analysis_view.read import read_full, read_run
from tools.analysis_view.report import findings, follow_ups
from toolserver.contract import Outcome, Reporter, ToolError

_TRIGGERS = 50
NO_CLIP = "grad_clip unknown: pass grad_clip, or record it with AnalysisConfig(grad_clip=…), to count clipped steps"


def _frame_at(frames: list[Frame], step: int, what: str) -> int:
    for i, f in enumerate(frames):
        if f.step == step:
            return i
    near = sorted(f.step for f in sorted(frames, key=lambda f: abs(f.step - step))[:5])
    raise ToolError(
        f"{what}: no checkpoint at step {step} (nearest: {', '.join(map(str, near))})",
        f"steps run from {frames[0].step} to {frames[-1].step}",
    )


def grids(frame: Frame, tensor: str | None) -> Grids | None:
    """The sampled grids of `tensor` (default: the gridded parameter that moved most) at `frame`'s checkpoint."""
    ck = read_full(frame)
    name = tensor or compute.most_moved_gridded(ck)
    if name is None:
        return None
    if name not in compute.gridded(ck):
        listed = ", ".join(compute.gridded(ck)) or "none"
        raise ToolError(
            f"tensor {name} has no grid in {frame.path.name} (gridded there: {listed})",
            "grids are recorded for AnalysisConfig.max_grids matrices spread over depth",
        )
    return compute.grids_view(ck, name)


def analyse(
    loaded: Run, skipped: list[Skipped], args: AnalysisViewInput, shown: Grids | None, max_cells: int = MAX_CELLS
) -> AnalysisViewResult:
    """The result from a run's frames; `max_cells` caps each heatmap (raised only to draw a full-size card)."""
    frames = loaded.frames
    layers = compute.n_layers(list(loaded.shapes))
    depths = [compute.depth(f.grad, layers) for f in frames]
    picks = (
        sorted({_frame_at(frames, s, "steps") for s in args.steps}) if args.steps else compute.default_waterfall(frames)
    )
    cols = compute.spread(len(frames), compute.fit(args.columns, layers, max_cells))
    clip = args.grad_clip or loaded.grad_clip
    movement = loaded.movement
    triggered = [Trigger(step=f.step, reasons=f.triggered) for f in frames if f.triggered]
    return AnalysisViewResult(
        dir=str(loaded.dir),
        checkpoints=len(frames),
        skipped=skipped,
        first_step=frames[0].step,
        last_step=frames[-1].step,
        n_layers=layers,
        triggered=triggered[:_TRIGGERS],
        triggered_total=len(triggered),
        movement=movement,
        grad_clip=clip,
        timeline=compute.timeline(frames, depths, cols),
        waterfall=compute.waterfall(frames, depths, picks),
        grad_heatmap=compute.grad_heatmap(frames, depths, layers, cols),
        movement_top=compute.movement_top(frames[-1], loaded.shapes, movement, args.top) if movement else [],
        movement_layers=(
            compute.movement_heatmap(frames, loaded.shapes, loaded.reference_norms, layers, cols)
            if loaded.reference_norms is not None and layers
            else None
        ),
        grids=shown,
        attention=compute.attention_view(frames, args.columns, max_cells),
        activations=compute.activation_view(frames, args.columns, max_cells // 8),  # lines, not cells: fewer points
        vanishing=rules.vanishing(frames, depths, args.vanishing_ratio),
        pinch=rules.pinch(frames, depths, args.pinch_drop),
        clipping=(
            rules.clipping(frames, depths, clip, "input" if args.grad_clip else "checkpoints", args.clip_fraction)
            if clip
            else None
        ),
        collapsed=rules.collapsed(frames, args.collapse_fraction, args.collapse_window),
        still=rules.still(frames, loaded.shapes, movement, args.still),
        grown=rules.grown(frames, args.activation_growth),
        nonfinite=rules.nonfinite(frames, depths),
        rules=rules.rules(args),
        notes=loaded.notes + ([] if clip else [NO_CLIP]),
    )


def run(ctx: ToolContext, args: AnalysisViewInput, reporter: Reporter) -> Outcome[AnalysisViewResult]:
    root = Path(args.dir).expanduser()
    loaded, skipped = read_run(root, reporter)
    frames = loaded.frames
    at = _frame_at(frames, args.step, "step") if args.step is not None else len(frames) - 1
    reporter.progress(0.9, f"grids of step {frames[at].step}")
    try:
        shown = grids(frames[at], args.tensor)
    except ToolError as e:  # the default checkpoint's full read failed: the rest still stands
        if args.tensor is not None or args.step is not None:
            raise
        shown = None
        loaded.notes.append(f"no grids: {e.message}")
    result = analyse(loaded, skipped, args, shown)
    reporter.progress(1.0, f"{len(frames)} checkpoints analysed")
    return Outcome(result=result, findings=findings(result, args), follow_ups=follow_ups(result))
