"""The people view of a result: the tool's table, then findings and suggested next calls (CLI and MCP text)."""

from __future__ import annotations

import json
from typing import Any

from toolserver.contract import Envelope, ToolSpec


def render(spec: ToolSpec[Any, Any], envelope: Envelope[Any]) -> str:
    parts = [spec.table(envelope.result)]
    if envelope.findings:
        parts.append("Findings:\n" + "\n".join(f"  [{f.severity}] {f.text}" for f in envelope.findings))
    if envelope.follow_ups:
        parts.append(
            "Next:\n" + "\n".join(f"  {fu.tool} {json.dumps(fu.args)} — {fu.why}" for fu in envelope.follow_ups)
        )
    parts.append(f"call_id {envelope.call_id} · {envelope.duration_s:.2f}s")
    return "\n\n".join(p for p in parts if p)
