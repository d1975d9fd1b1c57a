"""The watch tool's run: read a training run's step events — a finished log, a file still being written
(`follow`), or only what is new since the previous call (`since_last`) — and feed the signal engine."""

from __future__ import annotations

import time
from pathlib import Path

from session.context import ToolContext
from tools.watch.engine import EngineConfig
from tools.watch.models import Series, WatchInput, WatchResult
from tools.watch.readers import FORMAT_HINT, detect_format
from tools.watch.report import findings, follow_ups, group, pick
from tools.watch.snapshot import WATCH_EVENTS, Signal, StepSnapshot, severity_key
from tools.watch.watcher import RunSummary, RunWatcher, default_run_name, load_state, save_state
from toolserver.contract import Outcome, Reporter, ToolError

POLL_S = 0.2
LIVE_SIGNAL_CAP = 200  # live signal events per replay; the result holds the rest
STEP_EVENTS_PER_S = 10  # live step events in follow mode (steps that fire a signal always go out)


def signal_line(run: str, s: Signal) -> str:
    return f"[{s.severity:<8}] {run} step {s.step:>7}  {s.type:<19} {s.message}"


class LiveOutput:
    """What the tool tells the reporter while reading. Following: every signal as it fires, with a
    terminal line, and step events for the sparklines (rate-limited). Replaying: signal events for the
    web card (capped) without terminal lines, since the final table lists them."""

    def __init__(self, reporter: Reporter, run: str, follow: bool) -> None:
        self.reporter, self.run, self.follow = reporter, run, follow
        self.signals_sent = 0
        self._next_step_at = 0.0

    def on_step(self, snap: StepSnapshot, signals: list[Signal]) -> None:
        if self.follow:
            now = time.monotonic()
            if signals or now >= self._next_step_at:
                self._next_step_at = now + 1.0 / STEP_EVENTS_PER_S
                self.reporter.emit(WATCH_EVENTS.type("step"), {"run": self.run, "snapshot": snap.wire()})
        for s in signals:
            if self.follow or self.signals_sent < LIVE_SIGNAL_CAP:
                self.reporter.emit(
                    WATCH_EVENTS.type("signal"),
                    {"run": self.run, "signal": s.model_dump(mode="json")},
                    text=signal_line(self.run, s) if self.follow else None,
                )
            self.signals_sent += 1


def _wait_for_file(path: Path, args: WatchInput) -> bool:
    """Follow mode may start before the training script has written anything."""
    start = time.monotonic()
    while not (path.exists() and path.stat().st_size > 0):
        if args.idle_timeout_s and time.monotonic() - start > args.idle_timeout_s:
            return False
        time.sleep(POLL_S)
    return True


def _open(path: Path, args: WatchInput, config: EngineConfig) -> tuple[RunWatcher, bool, list[str]]:
    """A fresh watcher, or with since_last the saved one for this file (and why not, if it cannot be)."""
    fmt = detect_format(path)
    state, why = load_state(path, fmt, config) if args.since_last else (None, None)
    return RunWatcher(path, fmt, config, state), state is not None, [why] if why else []


class _Tally:
    """Steps and signals of this call; a restart of the file starts the count again with the new run."""

    def __init__(self, watcher: RunWatcher) -> None:
        self.watcher, self.steps = watcher, 0
        self.fired: list[Signal] = []
        self._restarts = watcher.restarts

    def poll(self, live: LiveOutput, final: bool) -> int:
        n, signals = self.watcher.poll(final=final, on_step=live.on_step)
        if self.watcher.restarts != self._restarts:
            self._restarts, self.steps, self.fired = self.watcher.restarts, 0, []
        self.steps += n
        self.fired.extend(signals)
        return n


def _replay(watcher: RunWatcher, live: LiveOutput, reporter: Reporter, final: bool) -> _Tally:
    """Read to the end of the file. final=False (since_last: the run may still be writing) leaves a
    half-written last line for the next call."""
    tally = _Tally(watcher)
    while True:
        tally.poll(live, final)
        reporter.progress(
            watcher.progress(),
            f"step {watcher.summary.last_step}: {watcher.summary.steps_seen} steps, "
            f"{sum(watcher.summary.signals_by_type.values())} signals",
        )
        if not watcher.pending():
            return tally


def _follow(watcher: RunWatcher, live: LiveOutput, args: WatchInput) -> _Tally:
    tally = _Tally(watcher)
    last_data = time.monotonic()
    try:
        while True:
            if tally.poll(live, final=False) or watcher.pending():
                last_data = time.monotonic()
                continue
            if args.idle_timeout_s and time.monotonic() - last_data > args.idle_timeout_s:
                break
            time.sleep(POLL_S)
        tally.poll(live, final=True)  # a last line the writer never ended
    except KeyboardInterrupt:  # Ctrl-C ends a follow cleanly: the summary still prints
        pass
    return tally


def run(ctx: ToolContext, args: WatchInput, reporter: Reporter) -> Outcome[WatchResult]:
    path = Path(args.metrics).expanduser()
    config = EngineConfig.model_validate(args.model_dump(include=set(EngineConfig.model_fields)))
    run_name = args.run or default_run_name(path)
    if args.follow:
        reporter.emit(
            WATCH_EVENTS.type("follow"),
            {"run": run_name, "metrics": str(path.resolve())},
            text=f"following {path} (Ctrl-C to stop)",
        )
        if not _wait_for_file(path, args):
            raise ToolError(
                f"{path} did not appear within {args.idle_timeout_s:g} s",
                "start the training script, or raise --idle-timeout-s",
            )
    elif not path.is_file():
        raise ToolError(f"no metrics file at {path}", FORMAT_HINT)
    watcher, resumed, notes = _open(path, args, config)
    live = LiveOutput(reporter, run_name, args.follow)
    tally = _follow(watcher, live, args) if args.follow else _replay(watcher, live, reporter, not args.since_last)
    steps, fired = tally.steps, tally.fired
    summary = watcher.summary
    if summary.steps_seen == 0 and not (args.follow or args.since_last):  # a live run may not have logged yet
        raise ToolError(_no_steps(path, summary), FORMAT_HINT)
    save_state(watcher)
    fired.sort(key=severity_key)
    result = WatchResult(
        run=run_name,
        metrics=str(path.resolve()),
        format=watcher.format,
        since_last=resumed,
        new_steps=steps,
        summary=summary,
        signals=pick(fired, args.max_signals),
        signals_total=len(fired),
        groups=group(fired),
        ongoing=watcher.engine.ongoing(),
        notes=notes + watcher.notes,
        series=Series(**watcher.sampler.series()),
    )
    reporter.emit(WATCH_EVENTS.type("summary"), {"run": run_name, "summary": summary.model_dump(mode="json")})
    return Outcome(result, findings(result, fired), follow_ups(path, args))


def _no_steps(path: Path, summary: RunSummary) -> str:
    if summary.bad_lines:
        first = summary.bad_line_examples[0]
        return f"no step events in {path}: {summary.bad_lines} unreadable lines (line {first.line}: {first.error})"
    return f"no step events in {path}: {summary.skipped_rows} rows, none with a training loss"
