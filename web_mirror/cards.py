"""A card is the fold of its events (keyed by call_id). static/fold.js applies the same rules live.

Tool calls fold from the runner's `tool.*` events. Events of a live family the tools declare (contract.LiveFamily:
watch's `training.watch.*`, simulation's `simulate.*`) fold into the card's bounded live series: points,
markers pinned on them, a final summary. Events come from anywhere (tools, training scripts, fuzzers): every
field is read defensively, so a malformed event shows up as less information on its card, never as an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from toolserver.contract import LiveFamily
from web_mirror.store import StoredEvent
from web_mirror.wire import NON_FINITE

EXTRA_KEPT = 100  # other events of a card: the latest ones are kept
TOOL_EVENTS = ("tool.start", "tool.progress", "tool.result", "tool.error")


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or value in NON_FINITE:
        return value
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Folder:
    """Folds events into cards under the given live families (the registered tools' declarations)."""

    def __init__(self, families: Sequence[LiveFamily]) -> None:
        self.families = sorted(families, key=lambda f: len(f.prefix), reverse=True)  # the longest prefix wins

    def family(self, event_type: str) -> LiveFamily | None:
        return next((f for f in self.families if f.owns(event_type)), None)

    def new_card(self, ev: StoredEvent) -> dict[str, Any]:
        family = self.family(ev.type)
        return {
            "call_id": ev.call_id,
            "session": ev.session,
            "kind": family.card if family else "generic",
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
            "live": None,
            "extra": [],
        }

    def apply(self, card: dict[str, Any], ev: StoredEvent) -> None:
        """Fold one event into its card, in place."""
        d = ev.data
        card["last_seq"] = ev.seq
        if ev.type in TOOL_EVENTS:
            _tool_event(card, ev)
            return
        family = self.family(ev.type)
        if family is None:
            _keep(card, ev)
            return
        live = card["live"]
        if live is None or live["family"] != family.prefix:
            live = card["live"] = {
                "family": family.prefix,
                "label": None,
                "points": [],
                "markers": [],
                "summary": None,
                "seen": 0,
                "stride": 1,
                "pinned": 0,
            }
        live["label"] = _text(d.get(family.label_key)) or live["label"]
        suffix = ev.type[len(family.prefix) + 1 :]
        if suffix == family.point and isinstance(d.get(family.point_key), dict):
            _add_point(live, family, d[family.point_key])
        elif suffix == family.marker and isinstance(d.get(family.marker_key), dict):
            live["markers"].append(d[family.marker_key])
            _pin(live, family, d[family.marker_key])
        elif suffix == family.summary:
            live["summary"] = d.get(family.summary_key)
            if card["tool"] is None:  # a stream of its own (a training script): its summary ends it
                card["status"] = "ok"
                card["ended_ts"] = ev.ts
        else:
            _keep(card, ev)

    def fold_into(self, cards: dict[str, dict[str, Any]], events: Iterable[StoredEvent]) -> None:
        """Fold more of an ordered event log into cards keyed by call_id, in place (a cache folds only new events)."""
        for ev in events:
            card = cards.get(ev.call_id)
            if card is None:
                card = cards[ev.call_id] = self.new_card(ev)
            self.apply(card, ev)

    def fold(self, events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
        """Cards from an ordered event log, newest (latest first event) first."""
        cards: dict[str, dict[str, Any]] = {}
        self.fold_into(cards, events)
        return newest_first(cards)


def _tool_event(card: dict[str, Any], ev: StoredEvent) -> None:
    d = ev.data
    if ev.type != "tool.progress":
        card["tool"] = _text(d.get("tool")) or card["tool"]
        card["kind"] = _text(d.get("card")) or card["kind"]
    if ev.type == "tool.start":
        card["started_ts"] = ev.ts
        card["args"] = d.get("args") if isinstance(d.get("args"), dict) else None
    elif ev.type == "tool.progress":
        card["progress"] = {"fraction": _number(d.get("fraction")), "message": _text(d.get("message"))}
    else:
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


def _add_point(live: dict[str, Any], family: LiveFamily, raw: dict[str, Any]) -> None:
    """Append a point, keeping the series bounded however long the stream: a point stays if its ordinal `n` is
    on the stride, a marker pinned it (`pinned`, set when the marker arrives: markers stay on the line), or it
    is the latest. Once max_points are kept (at least half of them unpinned), the stride doubles and the points
    off it go. Only counts decide, so the page's fold (fold.js) keeps exactly the same points."""
    points = live["points"]
    if points and points[-1]["n"] % live["stride"] != 0 and not points[-1]["pinned"]:
        points.pop()  # the previous latest, kept only while it was the latest
    points.append({**{k: _number(raw.get(k)) for k in family.fields}, "n": live["seen"], "pinned": False})
    live["seen"] += 1
    if len(points) >= family.max_points and len(points) - live["pinned"] >= family.max_points // 2:
        live["stride"] *= 2
        last = len(points) - 1
        live["points"] = [p for i, p in enumerate(points) if p["n"] % live["stride"] == 0 or p["pinned"] or i == last]


def _pin(live: dict[str, Any], family: LiveFamily, marker: dict[str, Any]) -> None:
    """Pin the kept point at the marker's x (the newest such, searched from the end: usually the last)."""
    x = _number(marker.get(family.x))
    if x is None:
        return
    for point in reversed(live["points"]):
        if point[family.x] == x:
            if not point["pinned"]:
                point["pinned"] = True
                live["pinned"] += 1
            return


def _keep(card: dict[str, Any], ev: StoredEvent) -> None:
    card["extra"] = (card["extra"] + [{"type": ev.type, "ts": ev.ts, "data": ev.data}])[-EXTRA_KEPT:]


def newest_first(cards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cards.values(), key=lambda c: c["first_seq"], reverse=True)
