"""What people and agents read of a watch call: ranked findings, follow-ups, the card payload, a text table."""

from __future__ import annotations

import math
import time
from pathlib import Path

from tools.watch.models import SignalGroup, WatchCard, WatchInput, WatchResult
from tools.watch.snapshot import SIGNAL_TYPES, Signal
from toolserver.contract import SEVERITY_RANK, Finding, FollowUp

SLIM_SIGNALS = 100
TABLE_ROWS_PER_TYPE = 3  # a lasting condition re-fires every cooldown: the table shows a few, then a count


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
    """Per type: worst severity first, ties in the engine's priority order (`fired` is sorted most severe first).
    Episode ends are counted apart from what fired."""
    groups: dict[str, SignalGroup] = {}
    for s in fired:
        end = s.episode == "end"
        g = groups.get(s.type)
        if g is None:
            groups[s.type] = SignalGroup(
                type=s.type,
                severity=s.severity,
                count=int(not end),
                ended=int(end),
                first_step=s.step,
                last_step=s.step,
            )
        else:
            g.count += not end
            g.ended += end
            g.first_step, g.last_step = min(g.first_step, s.step), max(g.last_step, s.step)
    return sorted(groups.values(), key=lambda g: (SEVERITY_RANK[g.severity], SIGNAL_TYPES.index(g.type)))


def _steps(g: SignalGroup) -> str:
    return f"step {g.first_step}" if g.count == 1 else f"steps {g.first_step}–{g.last_step}"


BIGGER_IS_WORSE = frozenset({"gradient_spike", "loss_diverging", "loss_spike"})  # maxGrad, the rise, the ratio


def _worse(a: Signal, b: Signal) -> bool:
    """Whether `a` tells more than `b` of the same type: more severe, then a larger spike or rise, then earlier."""
    if a.severity != b.severity:
        return SEVERITY_RANK[a.severity] < SEVERITY_RANK[b.severity]
    if a.type in BIGGER_IS_WORSE and a.value is not None and b.value is not None and a.value != b.value:
        return a.value > b.value
    return a.step < b.step


def findings(result: WatchResult, fired: list[Signal]) -> list[Finding]:
    """One line per signal type (worst first) quoting its most telling signal and its last episode end, then the
    conditions still going on, then what limited the analysis."""
    worst: dict[str, Signal] = {}
    ends: dict[str, Signal] = {}
    for s in fired:
        if s.episode == "end":
            if s.type not in ends or s.step > ends[s.type].step:
                ends[s.type] = s
        elif s.type not in worst or _worse(s, worst[s.type]):
            worst[s.type] = s
    out = []
    for g in result.groups:
        parts = []
        if g.type in worst:
            parts.append(f"{g.type} ×{g.count} ({_steps(g)}): {worst[g.type].message} [step {worst[g.type].step}]")
        if g.type in ends:
            parts.append(f"{'' if parts else g.type + ' '}ended ×{g.ended}, last: {ends[g.type].message}")
        out.append(Finding(severity=g.severity, text="; ".join(parts)))
    out += [
        Finding(
            severity="info" if e.type == "loss_plateau" else "warn",
            text=f"ongoing: {e.type} since step {e.since_step}, {e.message}"
            + (f": {', '.join(e.layers[:8])}{' …' if len(e.layers) > 8 else ''}" if e.layers else ""),
        )
        for e in result.ongoing
    ]
    s = result.summary
    if not result.signals_total and s.steps_seen:
        loss = (
            f"loss {s.loss_first:.4g} → {s.loss_last:.4g}"
            if s.loss_first is not None and s.loss_last is not None
            else "no finite loss"
        )
        out.append(
            Finding(text=f"no signals over {result.new_steps} steps ({loss}, steps {s.first_step}–{s.last_step})")
        )
    if s.steps_seen and not s.layers_reported:
        out.append(
            Finding(text="the log has no per-layer gradNorms: dead-layer and attention-head detectors could not run")
        )
    if s.bad_lines:
        b = s.bad_line_examples[0]
        out.append(
            Finding(severity="warn", text=f"{s.bad_lines} unreadable lines skipped (first: line {b.line}: {b.error})")
        )
    if s.out_of_order:
        out.append(
            Finding(
                text=f"{s.out_of_order} rows whose step did not increase were skipped (first at line "
                f"{s.out_of_order_lines[0]}): two processes writing one log, or a resumed run"
            )
        )
    return out


def follow_ups(path: Path, args: WatchInput) -> list[FollowUp]:
    live = args.follow or args.since_last or time.time() - path.stat().st_mtime < 600
    if not live:
        return []
    return [
        FollowUp(
            tool="watch",
            args={"metrics": str(path), "since_last": True},
            why="the run may still be writing: ask again for only the signals new since this call",
        )
    ]


def slim(result: WatchResult) -> WatchCard:
    return WatchCard(
        run=result.run,
        series=result.series,
        signals=result.signals[:SLIM_SIGNALS],
        ongoing=result.ongoing,
        summary=result.summary,
    )


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
            lines += [
                f"{sig.severity:<9}{sig.step:>8}  {sig.type + (' end' if sig.episode == 'end' else ''):<20}"
                f"{_num(sig.value):>10}  {sig.message}"
                for sig in rows
            ]
            if g.count + g.ended > len(rows):
                lines.append(
                    f"{'':19}… {g.type} ×{g.count + g.ended - len(rows)} more, {_steps(g)} (--output json lists up "
                    f"to --max-signals)"
                )
    else:
        lines.append("no signals" + (" since the last call" if result.since_last else ""))
    counts = ", ".join(
        f"{k} {v}" for k, v in sorted(s.signals_by_severity.items(), key=lambda kv: SEVERITY_RANK[kv[0]])
    )
    lines += [
        "",
        f"steps      {s.steps_seen} ({s.first_step}–{s.last_step}); this call {result.new_steps}",
        f"loss       first {_num(s.loss_first)}  last {_num(s.loss_last)}  min {_num(s.loss_min)}"
        + (f"  non-finite {s.nonfinite_losses}" if s.nonfinite_losses else ""),
        f"maxGrad    max {_num(s.max_grad_max)} at step {s.max_grad_max_step}"
        if s.max_grad_max is not None
        else "maxGrad    none logged (spike detector idle)",
        f"layers     {s.layers_reported} per step"
        if s.layers_reported
        else "layers     none reported (dead-layer detectors idle)",
        f"signals    {counts or 'none'}",
    ]
    if s.bad_lines:
        lines.append(
            f"bad lines  {s.bad_lines}: " + "; ".join(f"line {b.line}: {b.error}" for b in s.bad_line_examples[:3])
        )
    if s.skipped_rows or s.out_of_order:
        lines.append(
            f"skipped    {s.skipped_rows} rows without a training loss, {s.out_of_order} rows with a non-increasing "
            f"step"
        )
    lines += [
        f"ongoing    {e.type} since step {e.since_step}: {e.message}"
        + (f" ({', '.join(e.layers[:4])}{' …' if len(e.layers) > 4 else ''})" if e.layers else "")
        for e in result.ongoing
    ]
    lines += [f"note       {n}" for n in result.notes]
    return "\n".join(lines)
