"""Which checkpoints a glob or a run directory holds, at which step, and which of them can be analysed.

A Hugging Face Trainer writes `checkpoint-N/` directories (full weights or a PEFT adapter, with
trainer_state.json); hand-written loops write `step_N.pt` files. A directory that holds weights is one
checkpoint (its optimizer, scheduler and RNG files are not weights); other directories are searched.
"""

from __future__ import annotations

import glob
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from session.checkpoints import CheckpointReader, align, open_checkpoint
from tools.trajectory.models import Entry, StepSource, TrajectoryInput
from tools.trajectory.weights_files import is_checkpoint_dir, is_weights_file
from toolserver.contract import ToolError, missing

_DIGITS = re.compile(r"\d+")


def candidates(args: TrajectoryInput) -> tuple[str, list[Path]]:
    """(what was searched, the candidate checkpoints in path order)."""
    if args.checkpoints is not None:
        pattern = str(Path(args.checkpoints).expanduser())
        found = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        paths = [p for p in found if (p.is_dir() and is_checkpoint_dir(p)) or (p.is_file() and is_weights_file(p))]
        if not paths:
            raise ToolError(
                f"no checkpoints match {args.checkpoints}"
                + (f" ({len(found)} paths matched, none of them weights)" if found else ""),
                "quote the glob so the shell does not expand it, e.g. --checkpoints 'run/step_*.pt'",
            )
        return args.checkpoints, paths
    root = Path(args.dir or "").expanduser()
    if not root.is_dir():
        raise ToolError(
            f"--dir {root} {missing(root) if not root.exists() else 'is not a directory'}",
            "pass the run's output directory",
        )
    paths = _walk(root)
    if not paths:
        raise ToolError(
            f"no checkpoints under {root}",
            "expected checkpoint-N/ directories or .pt/.bin/.safetensors files",
        )
    return str(root), paths


def _walk(directory: Path) -> list[Path]:
    unit = is_checkpoint_dir(directory)
    out = [directory] if unit else []
    for child in sorted(directory.iterdir()):
        if child.is_symlink():
            continue  # a link can loop, or lead out of the run
        if child.is_dir():
            out += [child] if is_checkpoint_dir(child) else _walk(child)
        elif not unit and child.is_file() and is_weights_file(child):
            out.append(child)
    return out


def step_from_name(path: Path) -> int | None:
    numbers = _DIGITS.findall(path.name if path.is_dir() else path.stem)
    return int(numbers[-1]) if numbers else None


@dataclass
class Found:
    entry: Entry
    reader: CheckpointReader | None


def survey(paths: list[Path], base: CheckpointReader, stack: ExitStack) -> list[Found]:
    """Open every candidate (lazily: headers only), read its step, check it fits the base; in step order, with
    duplicates, unreadable ones, another kind than most and those without a step marked rather than dropped."""
    found: list[Found] = []
    for path in paths:
        try:
            reader = stack.enter_context(open_checkpoint(path))
        except ToolError as e:
            found.append(
                Found(Entry(path=str(path), step=step_from_name(path), status="unreadable", reason=e.message), None)
            )
            continue
        step, source = reader.step, reader.step_source
        named: StepSource | None = source
        if step is None:
            step, named = step_from_name(path), "name"
        entry = Entry(
            path=str(path),
            step=step,
            step_source=named if step is not None else None,
            kind=reader.kind,
            status="analysed",
        )
        found.append(Found(entry, reader))
    kinds = Counter(f.reader.kind for f in found if f.reader is not None)
    kind = kinds.most_common(1)[0][0] if kinds else None
    for f in found:
        if f.reader is None:
            continue
        if f.entry.step is None:
            f.entry.status, f.entry.reason = (
                "no_step",
                "no step in the file, no trainer_state.json, no number in the name",
            )
        elif f.reader.kind != kind:
            f.entry.status = "other_kind"
            f.entry.reason = f"a {f.reader.kind} checkpoint among {kinds[kind]} {kind} ones"
        else:
            try:
                align(base, f.reader)
            except ToolError as e:
                f.entry.status, f.entry.reason = "unreadable", e.message
    found.sort(key=lambda f: (f.entry.step is None, f.entry.step or 0, f.entry.path))
    first_at: dict[int, str] = {}
    for f in found:
        if f.entry.status != "analysed" or f.entry.step is None:
            continue
        if f.entry.step in first_at:
            f.entry.status = "duplicate"
            f.entry.reason = f"step {f.entry.step} is also {first_at[f.entry.step]}, which is analysed"
        else:
            first_at[f.entry.step] = f.entry.path
    return found
