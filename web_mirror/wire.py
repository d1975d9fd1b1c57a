"""Mirror events as JSON on the wire and on disk.

JSON has no NaN or Infinity, but a diverging run's loss is exactly that: non-finite floats travel as
the strings "NaN", "Infinity", "-Infinity", which JavaScript's `Number()` reads back as numbers.
"""
from __future__ import annotations

import json
import math
from typing import Any

from pydantic_core import to_jsonable_python

NON_FINITE = ("NaN", "Infinity", "-Infinity")


def finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact strict JSON (never a bare NaN), non-ASCII kept as is; paths, datetimes etc. as pydantic writes them."""
    return json.dumps(finite_json(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=to_jsonable_python)
