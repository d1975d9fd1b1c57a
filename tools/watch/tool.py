"""The `watch` tool: signals from a training run's step events — a finished log, a file still being
written (`follow`), or only what is new since the previous call (`since_last`)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from session.state import Session
from toolserver.registry import Finding, FollowUp, Outcome, Reporter, ToolError, ToolSpec, register
from tools.watch.engine import EngineConfig
from tools.watch.readers import FORMAT_HINT, Format, detect_format
from tools.watch.snapshot import SEVERITY_RANK, SIGNAL_TYPES, Severity, Signal, SignalType, StepSnapshot, severity_key
from tools.watch.watcher import SERIES_POINTS, RunSummary, RunWatcher, default_run_name, load_state, save_state

POLL_S = 0.2
LIVE_SIGNAL_CAP = 200  # live signal events per replay; the result holds the rest
STEP_EVENTS_PER_S = 10  # live step events in follow mode (steps that fire a signal always go out)
SLIM_SIGNALS = 100
TABLE_ROWS_PER_TYPE = 3  # a lasting condition re-fires every cooldown: the table shows a few, then a count


class WatchInput(EngineConfig):
    metrics: str = Field(description="path to the run's step events: a .jsonl file, a trainer_state.json or a Lightning metrics.csv")
    follow: bool = Field(False, description="keep reading as the file grows (stop with Ctrl-C, or after idle_timeout_s without new data)")
    idle_timeout_s: float = Field(300.0, ge=0, description="in follow mode, stop after this many seconds without new data (0: never)")
    since_last: bool = Field(False, description="continue from where the previous watch call on this file stopped: only new signals are returned")
    run: str | None = Field(None, description="name for this run on the web card (default: the file's folder and name)")
    max_signals: int = Field(50, ge=1, le=1000, description="signals listed in the result: each type's worst first, then the rest most severe first (counts cover all)")


class Series(BaseModel):
    step: list[int]
    loss: list[float | None]
    maxGrad: list[float | None]


class SignalGroup(BaseModel):
    """Every signal of one type fired during the call: a lasting condition fires once per cooldown."""

    type: SignalType
    severity: Severity = Field(description="the worst severity it fired with")
    count: int
    first_step: int
    last_step: int


class WatchResult(BaseModel):
    run: str
    metrics: str = Field(description="absolute path of the file read")
    format: Format
    since_last: bool = Field(description="true when this result covers only data new since the previous call")
    new_steps: int = Field(description="steps read by this call")
    summary: RunSummary = Field(description="cumulative over the whole run read so far")
    signals: list[Signal] = Field(description="signals fired during this call, most severe first (capped by max_signals; "
                                              "every type that fired is represented)")
    signals_total: int = Field(description="signals fired during this call")
    groups: list[SignalGroup] = Field(description="signals fired during this call per type: worst severity first, ties in priority order")
    notes: list[str] = Field(default_factory=list)
    series: Series = Field(description=f"downsampled to at most {SERIES_POINTS} points: last step, mean loss, max maxGrad per bucket")


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
                self.reporter.emit("training.watch.step", {"run": self.run, "snapshot": snap.wire()})
        for s in signals:
            if self.follow or self.signals_sent < LIVE_SIGNAL_CAP:
                self.reporter.emit("training.watch.signal", {"run": self.run, "signal": s.model_dump(mode="json")},
                                   text=signal_line(self.run, s) if self.follow else None)
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


def _replay(watcher: RunWatcher, live: LiveOutput, reporter: Reporter, final: bool) -> tuple[int, list[Signal]]:
    """Read to the end of the file. final=False (since_last: the run may still be writing) leaves a
    half-written last line for the next call."""
    steps, fired = 0, []
    while True:
        n, signals = watcher.poll(final=final, on_step=live.on_step)
        steps += n
        fired.extend(signals)
        reporter.progress(watcher.progress(), f"step {watcher.summary.last_step}: {watcher.summary.steps_seen} steps, "
                                              f"{sum(watcher.summary.signals_by_type.values())} signals")
        if not watcher.pending():
            return steps, fired


def _follow(watcher: RunWatcher, live: LiveOutput, args: WatchInput) -> tuple[int, list[Signal]]:
    steps, fired = 0, []
    last_data = time.monotonic()
    try:
        while True:
            n, signals = watcher.poll(final=False, on_step=live.on_step)
            steps += n
            fired.extend(signals)
            if n or watcher.pending():
                last_data = time.monotonic()
                continue
            if args.idle_timeout_s and time.monotonic() - last_data > args.idle_timeout_s:
                break
            time.sleep(POLL_S)
        n, signals = watcher.poll(final=True, on_step=live.on_step)  # a last line the writer never ended
        return steps + n, fired + signals
    except KeyboardInterrupt:  # Ctrl-C ends a follow cleanly: the summary still prints
        return steps, fired


def run(session: Session | None, args: WatchInput, reporter: Reporter) -> Outcome[WatchResult]:
    path = Path(args.metrics).expanduser()
    config = EngineConfig.model_validate(args.model_dump(include=set(EngineConfig.model_fields)))
    run_name = args.run or default_run_name(path)
    if args.follow:
        reporter.emit("training.watch.follow", {"run": run_name, "metrics": str(path.resolve())},
                      text=f"following {path} (Ctrl-C to stop)")
        if not _wait_for_file(path, args):
            raise ToolError(f"{path} did not appear within {args.idle_timeout_s:g} s", "start the training script, or raise --idle-timeout-s")
    elif not path.is_file():
        raise ToolError(f"no metrics file at {path}", FORMAT_HINT)
    watcher, resumed, notes = _open(path, args, config)
    live = LiveOutput(reporter, run_name, args.follow)
    if args.follow:
        steps, fired = _follow(watcher, live, args)
    else:
        steps, fired = _replay(watcher, live, reporter, final=not args.since_last)
    summary = watcher.summary
    if summary.steps_seen == 0 and not (args.follow or args.since_last):  # a live run may not have logged yet
        raise ToolError(_no_steps(path, summary), FORMAT_HINT)
    save_state(watcher)
    fired.sort(key=severity_key)
    result = WatchResult(
        run=run_name, metrics=str(path.resolve()), format=watcher.format, since_last=resumed, new_steps=steps,
        summary=summary, signals=pick(fired, args.max_signals), signals_total=len(fired), groups=group(fired),
        notes=notes, series=Series(**watcher.sampler.series()),
    )
    reporter.emit("training.watch.summary", {"run": run_name, "summary": summary.model_dump(mode="json")})
    return Outcome(result, findings(result, fired), follow_ups(path, args))


def _no_steps(path: Path, summary: RunSummary) -> str:
    if summary.bad_lines:
        first = summary.bad_line_examples[0]
        return f"no step events in {path}: {summary.bad_lines} unreadable lines (line {first.line}: {first.error})"
    return f"no step events in {path}: {summary.skipped_rows} rows, none with a training loss"


def pick(fired: list[Signal], limit: int) -> list[Signal]:
    """Up to `limit` of the signals (sorted most severe first): each type's worst goes in before any
    repeat, so a condition re-firing every cooldown cannot crowd a one-off spike out of the list."""
    firsts: dict[str, int] = {}
    for i, s in enumerate(fired):
        firsts.setdefault(s.type, i)
    chosen = set(list(firsts.values())[:limit])
    for i in range(len(fired)):
        if len(chosen) >= limit:
            break
        chosen.add(i)
    return [fired[i] for i in sorted(chosen)]


def group(fired: list[Signal]) -> list[SignalGroup]:
    """Per type: worst severity first, ties in the engine's priority order (`fired` is sorted most severe first)."""
    groups: dict[str, SignalGroup] = {}
    for s in fired:
        g = groups.get(s.type)
        if g is None:
            groups[s.type] = SignalGroup(type=s.type, severity=s.severity, count=1, first_step=s.step, last_step=s.step)
        else:
            g.count += 1
            g.first_step, g.last_step = min(g.first_step, s.step), max(g.last_step, s.step)
    return sorted(groups.values(), key=lambda g: (SEVERITY_RANK[g.severity], SIGNAL_TYPES.index(g.type)))


def _steps(g: SignalGroup) -> str:
    return f"step {g.first_step}" if g.count == 1 else f"steps {g.first_step}–{g.last_step}"


BIGGER_IS_WORSE = frozenset({"gradient_spike", "loss_diverging"})  # their value: maxGrad, the loss rise


def _worse(a: Signal, b: Signal) -> bool:
    """Whether `a` tells more than `b` of the same type: more severe, then a larger spike or rise, then earlier."""
    if a.severity != b.severity:
        return SEVERITY_RANK[a.severity] < SEVERITY_RANK[b.severity]
    if a.type in BIGGER_IS_WORSE and a.value is not None and b.value is not None and a.value != b.value:
        return a.value > b.value
    return a.step < b.step


def findings(result: WatchResult, fired: list[Signal]) -> list[Finding]:
    """One line per signal type (worst first) quoting its most telling signal, then what limited the analysis."""
    worst: dict[str, Signal] = {}
    for s in fired:
        if s.type not in worst or _worse(s, worst[s.type]):
            worst[s.type] = s
    out = [Finding(severity=g.severity, text=f"{g.type} ×{g.count} ({_steps(g)}): {worst[g.type].message} "
                                             f"[step {worst[g.type].step}]") for g in result.groups]
    s = result.summary
    if not result.signals_total and s.steps_seen:
        loss = f"loss {s.loss_first:.4g} → {s.loss_last:.4g}" if s.loss_first is not None and s.loss_last is not None else "no finite loss"
        out.append(Finding(text=f"no signals over {result.new_steps} steps ({loss}, steps {s.first_step}–{s.last_step})"))
    if s.steps_seen and not s.layers_reported:
        out.append(Finding(text="the log has no per-layer gradNorms: dead-layer and attention-head detectors could not run"))
    if s.bad_lines:
        b = s.bad_line_examples[0]
        out.append(Finding(severity="warn", text=f"{s.bad_lines} unreadable lines skipped (first: line {b.line}: {b.error})"))
    if s.out_of_order:
        out.append(Finding(text=f"{s.out_of_order} rows whose step did not increase were skipped (first at line "
                                f"{s.out_of_order_lines[0]}): two processes writing one log, or a resumed run"))
    return out


def follow_ups(path: Path, args: WatchInput) -> list[FollowUp]:
    live = args.follow or args.since_last or time.time() - path.stat().st_mtime < 600
    if not live:
        return []
    return [FollowUp(tool="watch", args={"metrics": str(path), "since_last": True},
                     why="the run may still be writing: ask again for only the signals new since this call")]


def slim(result: WatchResult) -> dict[str, Any]:
    """The watch card: sparklines with markers, a signal feed by severity, the summary."""
    return {
        "run": result.run,
        "series": result.series.model_dump(),
        "signals": [s.model_dump(mode="json") for s in result.signals[:SLIM_SIGNALS]],
        "summary": result.summary.model_dump(mode="json"),
    }


def _num(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def table(result: WatchResult) -> str:
    s = result.summary
    lines = [f"watch {result.run} ({result.format}: {result.metrics})"]
    if result.signals:
        lines.append(f"{'severity':<9}{'step':>8}  {'signal':<20}{'value':>10}  message")
        listed: dict[str, list[Signal]] = {}
        for sig in result.signals:
            listed.setdefault(sig.type, []).append(sig)
        for g in result.groups:
            rows = listed.get(g.type, [])[:TABLE_ROWS_PER_TYPE]
            lines += [f"{sig.severity:<9}{sig.step:>8}  {sig.type:<20}{_num(sig.value):>10}  {sig.message}" for sig in rows]
            if g.count > len(rows):
                lines.append(f"{'':19}… {g.type} ×{g.count - len(rows)} more, {_steps(g)} (--output json lists up to --max-signals)")
    else:
        lines.append("no signals" + (" since the last call" if result.since_last else ""))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s.signals_by_severity.items(), key=lambda kv: SEVERITY_RANK[kv[0]]))
    lines += [
        "",
        f"steps      {s.steps_seen} ({s.first_step}–{s.last_step}); this call {result.new_steps}",
        f"loss       first {_num(s.loss_first)}  last {_num(s.loss_last)}  min {_num(s.loss_min)}"
        + (f"  non-finite {s.nonfinite_losses}" if s.nonfinite_losses else ""),
        f"maxGrad    max {_num(s.max_grad_max)} at step {s.max_grad_max_step}" if s.max_grad_max is not None
        else "maxGrad    none logged (spike detector idle)",
        f"layers     {s.layers_reported} per step" if s.layers_reported else "layers     none reported (dead-layer detectors idle)",
        f"signals    {counts or 'none'}",
    ]
    if s.bad_lines:
        lines.append(f"bad lines  {s.bad_lines}: " + "; ".join(f"line {b.line}: {b.error}" for b in s.bad_line_examples[:3]))
    if s.skipped_rows or s.out_of_order:
        lines.append(f"skipped    {s.skipped_rows} rows without a training loss, {s.out_of_order} rows with a non-increasing step")
    lines += [f"note       {n}" for n in result.notes]
    return "\n".join(lines)


SPEC = register(ToolSpec(
    name="watch",
    command="watch",
    card="watch",
    summary=(
        "Signals from a training run's step events (loss, learning rate, max grad norm, per-layer grad norms): "
        "divergence, gradient spikes, dead attention/other layers, plateaus, non-finite loss. Reads a JSONL step log, "
        "a Hugging Face trainer_state.json or a Lightning metrics.csv; no model and no GPU, ~40k steps/s when replaying. "
        "For a run still training call again with since_last=true to get only new signals (or follow=true to tail it). "
        "Next: dead layers → run_weight_diff on a checkpoint of the run to see whether those layers moved."
    ),
    input_model=WatchInput,
    output_model=WatchResult,
    run=run,
    slim=slim,
    table=table,
    needs_session=False,
))
