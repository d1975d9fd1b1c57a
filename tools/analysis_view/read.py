"""The viewer's I/O: every analysis_*.json in a folder read once, as a light digest (no histograms or grids),
into frames; the one checkpoint whose grids are shown read in full."""

from __future__ import annotations

from pathlib import Path

from tools.analysis_view.frames import Frame, Run, frame_of
from tools.analysis_view.models import Skipped
from tools.watch.analysis_schema import AnalysisCheckpoint, Movement, read_analysis_checkpoint
from toolserver.contract import Reporter, ToolError, missing

PATTERN = "analysis_*.json"
HINT = "StepLogger(model, analysis_dir=DIR) writes analysis_*.json files there"


def checkpoint_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ToolError(f"--dir {root} {missing(root) if not root.exists() else 'is not a directory'}", HINT)
    files = sorted(root.glob(PATTERN))
    if not files:
        raise ToolError(f"no analysis checkpoints ({PATTERN}) in {root}", HINT)
    return files


def read_run(root: Path, reporter: Reporter) -> tuple[Run, list[Skipped]]:
    files = checkpoint_files(root)
    frames: dict[int, Frame] = {}
    skipped: list[Skipped] = []
    shapes: dict[str, list[int]] = {}
    recorded: list[tuple[int, Movement | None, float | None]] = []  # (step, movement, grad_clip) per checkpoint
    reference: dict[int, dict[str, float]] = {}
    for i, path in enumerate(files):
        try:
            digest = read_analysis_checkpoint(path, digest=True)
        except ToolError as e:
            skipped.append(Skipped(file=path.name, reason=e.message))
            continue
        step, weights = digest["step"], digest["weights"]
        if step in frames:
            skipped.append(Skipped(file=path.name, reason=f"step {step} is also in {frames[step].path.name}"))
            continue
        frames[step] = frame_of(digest, path)
        if weights.keys() - shapes.keys():  # the first file, or one with new parameters: keep their order
            for name, w in weights.items():
                shapes.setdefault(name, w["shape"])
        movement = Movement(**digest["movement"]) if "movement" in digest else None
        if movement is not None and movement.reference_step == step:
            reference[step] = {name: w["norm"] for name, w in weights.items()}
        recorded.append((step, movement, digest.get("grad_clip")))
        if i % 50 == 0:
            reporter.progress(0.9 * i / len(files), f"read {i} of {len(files)} checkpoints")
    if not frames:
        first = skipped[0].reason
        raise ToolError(f"none of the {len(files)} analysis checkpoints in {root} can be read (first: {first})", HINT)
    recorded.sort(key=lambda r: r[0])
    movement = next((m for _, m, _ in reversed(recorded) if m is not None), None)
    clip = next((c for _, _, c in reversed(recorded) if c is not None), None)
    notes = []
    references = sorted({m.reference_step for _, m, _ in recorded if m is not None})
    if len(references) > 1:
        notes.append(
            f"movement is measured from {len(references)} references (steps {', '.join(map(str, references))}): a "
            f"resumed run; the ranking uses the last checkpoint's, step {references[-1]}"
        )
    ref_norms = reference.get(movement.reference_step) if movement is not None else None
    if movement is not None and ref_norms is None:
        notes.append(
            f"the reference checkpoint (step {movement.reference_step}) was not read: per-layer movement needs its "
            "weight norms"
        )
    run = Run(
        dir=root,
        frames=[frames[s] for s in sorted(frames)],
        shapes=shapes,
        movement=movement,
        reference_norms=ref_norms,
        grad_clip=clip,
        notes=notes,
    )
    return run, skipped


def read_full(frame: Frame) -> AnalysisCheckpoint:
    return read_analysis_checkpoint(frame.path)
