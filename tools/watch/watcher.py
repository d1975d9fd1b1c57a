"""Reader → engine → run summary and card series, resumable across calls.

`RunWatcher` owns one metrics file: it drops rows whose step does not increase, feeds the rest to the
engine, keeps a cumulative summary and a bounded downsampled series, and can be saved to / restored
from a small JSON state under $TRAINSPECT_HOME/watch/ so a later call (CLI or MCP, any process) picks
up exactly where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.readers import BadLine, Format, ReadBatch, open_reader
from tools.watch.snapshot import Signal, StepSnapshot
from toolserver.contract import atomic_write, home

STATE_VERSION = 2  # 2: the engine keeps episodes, the loss-spike and overflow windows
LIST_CAP = 20  # bad lines / out-of-order examples kept in the summary
SERIES_POINTS = 300


class RunSummary(BaseModel):
    """Cumulative over everything read from this file so far."""

    steps_seen: int = 0
    first_step: int | None = None
    last_step: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    loss_min: float | None = None
    nonfinite_losses: int = Field(0, description="steps whose loss was NaN or infinite")
    max_grad_max: float | None = Field(None, description="largest finite maxGrad seen")
    max_grad_max_step: int | None = None
    layers_reported: int = Field(0, description="most gradNorms entries in one step (0: dead-layer detectors idle)")
    signals_by_type: dict[str, int] = Field(
        default_factory=dict, description="signals fired per type (one-off events and episode starts)"
    )
    signals_by_severity: dict[str, int] = Field(default_factory=dict)
    ended_by_type: dict[str, int] = Field(default_factory=dict, description="episodes that ended, per type")
    bad_lines: int = 0
    bad_line_examples: list[BadLine] = Field(default_factory=list, description=f"the first {LIST_CAP}")
    skipped_rows: int = Field(0, description="rows without a training loss (eval rows, run summaries)")
    out_of_order: int = Field(0, description="rows whose step did not increase (two writers, resumed runs): skipped")
    out_of_order_lines: list[int] = Field(default_factory=list, description=f"the first {LIST_CAP}")

    def add_step(self, snap: StepSnapshot) -> None:
        self.steps_seen += 1
        if self.first_step is None:
            self.first_step = snap.step
        self.last_step = snap.step
        loss = snap.loss
        if math.isfinite(loss):
            if self.loss_first is None:
                self.loss_first = loss
            self.loss_last = loss
            self.loss_min = loss if self.loss_min is None else min(self.loss_min, loss)
        else:
            self.nonfinite_losses += 1
        g = snap.max_grad
        if g is not None and math.isfinite(g) and (self.max_grad_max is None or g > self.max_grad_max):
            self.max_grad_max, self.max_grad_max_step = g, snap.step
        if snap.grad_norms and len(snap.grad_norms) > self.layers_reported:
            self.layers_reported = len(snap.grad_norms)

    def add_signal(self, s: Signal) -> None:
        if s.episode == "end":
            self.ended_by_type[s.type] = self.ended_by_type.get(s.type, 0) + 1
            return
        self.signals_by_type[s.type] = self.signals_by_type.get(s.type, 0) + 1
        self.signals_by_severity[s.severity] = self.signals_by_severity.get(s.severity, 0) + 1

    def add_batch_issues(self, batch: ReadBatch) -> None:
        self.bad_lines += len(batch.bad)
        room = LIST_CAP - len(self.bad_line_examples)
        if room > 0:
            self.bad_line_examples.extend(batch.bad[:room])
        self.skipped_rows += batch.skipped

    def add_out_of_order(self, line: int) -> None:
        self.out_of_order += 1
        if len(self.out_of_order_lines) < LIST_CAP:
            self.out_of_order_lines.append(line)


class SeriesSampler:
    """At most SERIES_POINTS buckets of consecutive steps, whatever the run length: when full, adjacent
    buckets merge pairwise. A bucket shows its last step, its mean finite loss and its largest maxGrad,
    so a spike is never averaged away."""

    def __init__(self, state: dict[str, list[Any]] | None = None) -> None:
        s = state or {}
        self.steps: list[int] = s.get("steps", [])
        self.loss_sum: list[float] = s.get("loss_sum", [])
        self.loss_n: list[int] = s.get("loss_n", [])
        self.grads: list[float | None] = s.get("grads", [])
        self.counts: list[int] = s.get("counts", [])
        self.width: int = s.get("width", [1])[0]

    def add(self, step: int, loss: float, max_grad: float | None) -> None:
        finite = math.isfinite(loss)
        g = max_grad if max_grad is not None and math.isfinite(max_grad) else None
        if self.counts and self.counts[-1] < self.width:
            self.steps[-1] = step
            self.counts[-1] += 1
            if finite:
                self.loss_sum[-1] += loss
                self.loss_n[-1] += 1
            if g is not None and (self.grads[-1] is None or g > self.grads[-1]):
                self.grads[-1] = g
            return
        self.steps.append(step)
        self.counts.append(1)
        self.loss_sum.append(loss if finite else 0.0)
        self.loss_n.append(1 if finite else 0)
        self.grads.append(g)
        if len(self.steps) > SERIES_POINTS:
            self._halve()

    def _halve(self) -> None:
        def pairs(xs: list[Any]) -> list[tuple[Any, ...]]:
            return [tuple(xs[i : i + 2]) for i in range(0, len(xs), 2)]

        self.steps = [p[-1] for p in pairs(self.steps)]
        self.loss_sum = [sum(p) for p in pairs(self.loss_sum)]
        self.loss_n = [sum(p) for p in pairs(self.loss_n)]
        self.counts = [sum(p) for p in pairs(self.counts)]
        self.grads = [max((g for g in p if g is not None), default=None) for p in pairs(self.grads)]
        self.width *= 2

    def series(self) -> dict[str, list[Any]]:
        return {
            "step": list(self.steps),
            "loss": [s / n if n else None for s, n in zip(self.loss_sum, self.loss_n, strict=True)],
            "maxGrad": list(self.grads),
        }

    def state(self) -> dict[str, list[Any]]:
        return {
            "steps": self.steps,
            "loss_sum": self.loss_sum,
            "loss_n": self.loss_n,
            "grads": self.grads,
            "counts": self.counts,
            "width": [self.width],
        }


def default_run_name(path: Path) -> str:
    """`run/metrics.jsonl` → `run/metrics`: the folder usually names the run."""
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def _fingerprint(path: Path, length: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read(length)).hexdigest()


class RunWatcher:
    """Everything known about one metrics file; `poll` reads what is new and returns the signals that fired."""

    def __init__(self, path: Path, fmt: Format, config: EngineConfig, state: dict[str, Any] | None = None) -> None:
        self.path, self.format = path, fmt
        self.notes: list[str] = []
        self.restarts = 0
        if state:
            self.engine = SignalEngine.from_state(state["engine"])
            self.summary = RunSummary.model_validate(state["summary"])
            self.sampler = SeriesSampler(state["series"])
            self.reader = open_reader(path, fmt, state["cursor"])
        else:
            self.engine = SignalEngine(config)
            self.summary = RunSummary()
            self.sampler = SeriesSampler()
            self.reader = open_reader(path, fmt)

    def poll(
        self, *, final: bool, on_step: Callable[[StepSnapshot, list[Signal]], None] | None = None
    ) -> tuple[int, list[Signal]]:
        """Read one batch; returns (steps processed, signals fired)."""
        batch = self.reader.read(final=final)
        if batch.restarted:
            self._restart()
        self.summary.add_batch_issues(batch)
        fired: list[Signal] = []
        engine, summary, sampler = self.engine, self.summary, self.sampler
        steps = 0
        for line, snap in batch.snapshots:
            if engine.last_step is not None and snap.step <= engine.last_step:
                summary.add_out_of_order(line)
                continue
            signals = engine.observe(snap)
            summary.add_step(snap)
            sampler.add(snap.step, snap.loss, snap.max_grad)
            steps += 1
            for s in signals:
                summary.add_signal(s)
            if signals:
                fired.extend(signals)
            if on_step is not None:
                on_step(snap, signals)
        return steps, fired

    def _restart(self) -> None:
        """The file was truncated or rewritten (a restarted run): what follows is a new run, watched afresh."""
        s = self.summary
        before = f"steps {s.first_step}–{s.last_step}" if s.steps_seen else "no steps"
        self.notes.append(
            f"{self.path.name} was truncated or rewritten after {s.steps_seen} steps ({before}); read "
            "again from its start as a new run (the summary and series cover the new content)"
        )
        self.engine = SignalEngine(self.engine.config)
        self.summary, self.sampler = RunSummary(), SeriesSampler()
        self.restarts += 1

    def pending(self) -> bool:
        return self.reader.pending()

    def progress(self) -> float:
        return self.reader.progress()

    # ----- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        size = self.path.stat().st_size
        head = min(size, 4096)
        return {
            "version": STATE_VERSION,
            "path": str(self.path),
            "format": self.format,
            "fingerprint": {"length": head, "sha1": _fingerprint(self.path, head), "size": size},
            "cursor": self.reader.cursor(),
            "engine": self.engine.state(),
            "summary": self.summary.model_dump(mode="json"),
            "series": self.sampler.state(),
        }


def state_file(path: Path) -> Path:
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]
    return home() / "watch" / f"{key}.json"


def load_state(path: Path, fmt: Format, config: EngineConfig) -> tuple[dict[str, Any] | None, str | None]:
    """The saved state for this file, or None with the reason it cannot be resumed."""
    f = state_file(path)
    if not f.exists():
        return None, None
    try:
        state = json.loads(f.read_text())
    except ValueError:
        return None, "the saved cursor was unreadable; read from the start"
    if state.get("version") != STATE_VERSION or state.get("format") != fmt:
        return None, "the saved cursor is from another format or version; read from the start"
    if state["engine"]["config"] != config.model_dump():
        return None, "thresholds changed since the last call; read from the start"
    fp = state["fingerprint"]
    if path.stat().st_size < fp["size"] or _fingerprint(path, fp["length"]) != fp["sha1"]:
        return None, "the file was replaced or truncated since the last call; read from the start"
    return state, None


def save_state(watcher: RunWatcher) -> None:
    f = state_file(watcher.path)
    f.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(f, json.dumps(watcher.state()))
