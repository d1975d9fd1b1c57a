"""Mirror events as JSON on the wire and on disk.

JSON has no NaN or Infinity, but a diverging run's loss is exactly that: non-finite floats travel as
the strings "NaN", "Infinity", "-Infinity", which JavaScript's `Number()` reads back as numbers.
UTF-8 has no lone surrogates, but JSON's "\\ud800" escape and an undecodable file name both make
them: they travel as U+FFFD, so no event is lost to an encoding error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic_core import to_jsonable_python

NON_FINITE = ("NaN", "Infinity", "-Infinity")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def wire_value(value: Any) -> Any:
    """`value` with non-finite floats as strings and lone surrogates as U+FFFD, at any depth."""
    if isinstance(value, str):
        return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {(k if type(k) is str and k.isascii() else wire_value(str(k))): wire_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [wire_value(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact strict JSON (never a bare NaN), non-ASCII kept as is; paths, datetimes etc. as pydantic writes them."""
    return json.dumps(
        wire_value(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=to_jsonable_python
    )
