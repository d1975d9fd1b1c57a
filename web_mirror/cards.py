"""A card is the fold of its events (keyed by call_id). static/fold.js applies the same rules live.

Events come from anywhere (tools, training scripts, fuzzers): every field is read defensively, so a
malformed event shows up as less information on its card, never as a server error.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from web_mirror.store import StoredEvent
from web_mirror.wire import NON_FINITE

SEVERITY_RANK = {"critical": 0, "warn": 1, "info": 2}
STEP_FIELDS = ("step", "loss", "maxGrad", "learning_rate")
EXTRA_KEPT = 100  # family events without a renderer: the card keeps the latest ones
MAX_POINTS = 1000  # a watch card's step series: thinned to every other kept point when it reaches this


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or value in NON_FINITE:
        return value
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def new_card(ev: StoredEvent) -> dict[str, Any]:
    family = ev.type.split(".")[0]
    return {
        "call_id": ev.call_id,
        "session": ev.session,
        "kind": {"training": "watch", "simulate": "simulate"}.get(family, "generic"),
        "tool": None,
        "status": "running",
        "first_seq": ev.seq,
        "last_seq": ev.seq,
        "started_ts": ev.ts,
        "ended_ts": None,
        "duration_s": None,
        "args": None,
        "progress": None,
        "slim": None,
        "findings": [],
        "error": None,
        "hint": None,
        "has_result": False,
        "watch": None,
        "extra": [],
    }


def _watch(card: dict[str, Any]) -> dict[str, Any]:
    if card["watch"] is None:
        card["watch"] = {"run": None, "steps": [], "signals": [], "summary": None, "seen": 0, "stride": 1, "pinned": 0}
    return card["watch"]


def _add_step(watch: dict[str, Any], snap: dict[str, Any]) -> None:
    """Append a step, keeping the series bounded however long the run: a point stays if its ordinal `n` is on
    the stride, a signal fired at its step (`signal`, set when the signal arrives: markers stay on the line),
    or it is the latest. Once MAX_POINTS are kept (at least half of them unpinned), the stride doubles and
    the points off it go. Only counts decide, so the page's fold (fold.js) keeps exactly the same points."""
    steps = watch["steps"]
    if steps and steps[-1]["n"] % watch["stride"] != 0 and not steps[-1]["signal"]:
        steps.pop()  # the previous latest, kept only while it was the latest
    point = {k: _number(snap.get(k)) for k in STEP_FIELDS}
    steps.append({**point, "n": watch["seen"], "signal": False})
    watch["seen"] += 1
    if len(steps) >= MAX_POINTS and len(steps) - watch["pinned"] >= MAX_POINTS // 2:
        watch["stride"] *= 2
        last = len(steps) - 1
        watch["steps"] = [p for i, p in enumerate(steps) if p["n"] % watch["stride"] == 0 or p["signal"] or i == last]


def _pin(watch: dict[str, Any], signal: dict[str, Any]) -> None:
    """Mark the kept point at the signal's step (the newest such, searched from the end: usually the last)."""
    step = _number(signal.get("step"))
    if step is None:
        return
    for point in reversed(watch["steps"]):
        if point["step"] == step:
            if not point["signal"]:
                point["signal"] = True
                watch["pinned"] += 1
            return


def apply(card: dict[str, Any], ev: StoredEvent) -> None:
    """Fold one event into its card, in place."""
    d = ev.data
    card["last_seq"] = ev.seq
    if ev.type in ("tool.start", "tool.result", "tool.error"):
        card["tool"] = _text(d.get("tool")) or card["tool"]
        card["kind"] = _text(d.get("card")) or card["kind"]
    if ev.type == "tool.start":
        card["started_ts"] = ev.ts
        card["args"] = d.get("args") if isinstance(d.get("args"), dict) else None
    elif ev.type == "tool.progress":
        card["progress"] = {"fraction": _number(d.get("fraction")), "message": _text(d.get("message"))}
    elif ev.type in ("tool.result", "tool.error"):
        card["status"] = "ok" if ev.type == "tool.result" else "error"
        card["ended_ts"] = ev.ts
        card["duration_s"] = _number(d.get("duration_s"))
        if ev.type == "tool.result":
            card["slim"] = d.get("slim")
            findings = d.get("findings")
            card["findings"] = [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []
            card["has_result"] = d.get("has_result") is True
        else:
            card["error"] = _text(d.get("error"))
            card["hint"] = _text(d.get("hint"))
    elif ev.type.startswith("training.watch."):
        watch = _watch(card)
        watch["run"] = _text(d.get("run")) or watch["run"]
        if ev.type == "training.watch.step" and isinstance(d.get("snapshot"), dict):
            _add_step(watch, d["snapshot"])
        elif ev.type == "training.watch.signal" and isinstance(d.get("signal"), dict):
            watch["signals"].append(d["signal"])
            _pin(watch, d["signal"])
        elif ev.type == "training.watch.summary":
            watch["summary"] = d.get("summary")
            if card["tool"] is None:
                card["status"] = "ok"
                card["ended_ts"] = ev.ts
        else:
            _keep(card, ev)
    else:
        _keep(card, ev)


def _keep(card: dict[str, Any], ev: StoredEvent) -> None:
    card["extra"] = (card["extra"] + [{"type": ev.type, "ts": ev.ts, "data": ev.data}])[-EXTRA_KEPT:]


def fold_into(cards: dict[str, dict[str, Any]], events: Iterable[StoredEvent]) -> None:
    """Fold more of an ordered event log into cards keyed by call_id, in place (a cache folds only new events)."""
    for ev in events:
        card = cards.get(ev.call_id)
        if card is None:
            card = cards[ev.call_id] = new_card(ev)
        apply(card, ev)


def newest_first(cards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cards.values(), key=lambda c: c["first_seq"], reverse=True)


def fold(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """Cards from an ordered event log, newest (latest first event) first."""
    cards: dict[str, dict[str, Any]] = {}
    fold_into(cards, events)
    return newest_first(cards)
