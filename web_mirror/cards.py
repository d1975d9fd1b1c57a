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
        card["watch"] = {"run": None, "steps": [], "signals": [], "summary": None}
    return card["watch"]


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
            snap = d["snapshot"]
            watch["steps"].append({k: _number(snap.get(k)) for k in STEP_FIELDS})
        elif ev.type == "training.watch.signal" and isinstance(d.get("signal"), dict):
            watch["signals"].append(d["signal"])
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


def fold(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """Cards from an ordered event log, newest (latest first event) first."""
    cards: dict[str, dict[str, Any]] = {}
    for ev in events:
        card = cards.get(ev.call_id)
        if card is None:
            card = cards[ev.call_id] = new_card(ev)
        apply(card, ev)
    return sorted(cards.values(), key=lambda c: c["first_seq"], reverse=True)
