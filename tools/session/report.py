"""What the session tools show: card payloads and terminal tables."""

from __future__ import annotations

from typing import Any

from session.state import SessionStatus
from tools.session.models import LoadSaeResult, SaeCard, SessionCard


def slim_status(s: SessionStatus) -> SessionCard:
    return SessionCard.model_validate(s.model_dump(include=set(SessionCard.model_fields)))


def slim_sae(r: LoadSaeResult) -> SaeCard:
    return SaeCard.model_validate(r.model_dump(include=set(SaeCard.model_fields)))


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
            ("sae", s.sae),
            ("sae hook", s.sae_hook),
            ("calls", s.calls),
            ("model in memory", "yes" if s.model_in_memory else "no"),
        ]
    )
    if s.recent_calls:
        text += "\n\nrecent calls:\n" + "\n".join(
            f"  {c.created_at}  {c.tool:<22} {'ok' if c.ok else 'FAILED'}" for c in s.recent_calls
        )
    return text


def table_sae(r: LoadSaeResult) -> str:
    return _rows(
        [
            ("session", r.session),
            ("sae", r.sae),
            ("source", r.source),
            ("hook", r.hook),
            ("layer", r.layer),
            ("d_in", r.d_in),
            ("features", r.d_sae),
            ("architecture", r.architecture),
        ]
    )
