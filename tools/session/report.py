"""What the session tools show: card payloads and terminal tables."""

from __future__ import annotations

from typing import Any

from session.state import SessionStatus
from tools.session.models import SessionCard


def slim_status(s: SessionStatus) -> SessionCard:
    return SessionCard.model_validate(s.model_dump(include=set(SessionCard.model_fields)))


def _rows(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in rows)


def table_status(s: SessionStatus) -> str:
    text = _rows(
        [
            ("session", s.id),
            ("model", s.model),
            ("source", s.model_source),
            ("kind", s.kind),
            ("layers", s.n_layers),
            ("d_model", s.d_model),
            ("default layer", s.default_layer),
            ("saes", ", ".join(f"{x.spec} (layer {x.layer}, {x.hook})" for x in s.saes) or None),
            ("calls", s.calls),
            ("model in memory", "yes" if s.model_in_memory else "no"),
        ]
    )
    if s.recent_calls:
        text += "\n\nrecent calls:\n" + "\n".join(
            f"  {c.created_at}  {c.tool:<22} {'ok' if c.ok else 'FAILED'}" for c in s.recent_calls
        )
    return text
