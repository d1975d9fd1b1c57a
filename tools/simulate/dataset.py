"""The training set a simulation reads: JSONL (or a JSON array) of SFT or preference rows.

SFT rows: {instruction, response} (an Alpaca `input` joins the instruction), {prompt, completion}, or {text}
(the whole text is the target; the prompt is empty). Preference rows: {prompt, chosen, rejected}. The format
is detected from the first row unless given, and every row must match it. A bad row is one ToolError naming
the file, the line and the field; nothing is read half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from session.probes import json_items
from toolserver.contract import ToolError, missing

Format = Literal["sft", "preference"]
DATASET_HINT = (
    "a dataset is JSONL (or a JSON array) of {instruction, response}, {prompt, completion} or {text} rows (sft), "
    "or {prompt, chosen, rejected} rows (preference)"
)
PROMPT_KEYS = ("instruction", "prompt")
RESPONSE_KEYS = ("response", "completion", "output")


class Row(BaseModel):
    """One training example. `prompt` is the conditioning text ("" for a {text} row); the model is trained on
    `response` (SFT) or on chosen over rejected (preference)."""

    index: int = Field(description="0-based position among the dataset's rows")
    line: int = Field(description="1-based line in a JSONL file, or item number in a JSON array")
    prompt: str = ""
    response: str = ""
    chosen: str = ""
    rejected: str = ""

    @property
    def answer(self) -> str:
        """What a fine-tune trains on: the response, or a preference row's chosen answer (pass 2 takes SFT on it)."""
        return self.response or self.chosen

    def fields(self) -> dict[str, str]:
        """The row's non-empty text fields by name (what quality checks scan)."""
        names = ("prompt", "response", "chosen", "rejected")
        return {name: getattr(self, name) for name in names if getattr(self, name)}


class Dataset(BaseModel):
    path: str
    format: Format
    rows: list[Row]


def read_dataset(path: str | Path, fmt: Format | None = None) -> Dataset:
    """Every row of `path`; ToolError (one line naming the file, line and field) on anything malformed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ToolError(f"dataset {p} {missing(p)}" if not p.exists() else f"dataset {p} is not a file", DATASET_HINT)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"dataset {p} is unreadable: {e}", DATASET_HINT) from None
    items, unit = json_items(p, text, "dataset", DATASET_HINT)
    if not items:
        raise ToolError(f"dataset {p} holds no rows", DATASET_HINT)
    first_line, first = items[0]
    fmt = fmt or _detect(first, f"{p} {unit} {first_line}")
    rows = [_row(item, fmt, f"{p} {unit} {n}", index, n) for index, (n, item) in enumerate(items)]
    return Dataset(path=str(p.resolve()), format=fmt, rows=rows)


def _detect(item: Any, where: str) -> Format:
    if isinstance(item, dict) and "chosen" in item and "rejected" in item:
        return "preference"
    if isinstance(item, dict) and (any(k in item for k in PROMPT_KEYS) or "text" in item):
        return "sft"
    keys = ", ".join(map(str, list(item)[:6])) if isinstance(item, dict) else type(item).__name__
    raise ToolError(f"{where} is neither an SFT nor a preference row (keys: {keys})", DATASET_HINT)


def _text(item: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    key = next((k for k in keys if k in item), None)
    if key is None:
        return None
    value = item[key]
    if not isinstance(value, str):
        raise ToolError(f"{where}: field {key!r} is a {type(value).__name__}, not a string", DATASET_HINT)
    return value


def _row(item: Any, fmt: Format, where: str, index: int, line: int) -> Row:
    if not isinstance(item, dict):
        raise ToolError(f"{where} is a JSON {type(item).__name__}, not an object", DATASET_HINT)
    if fmt == "preference":
        fields = {k: _text(item, (k,), where) for k in ("prompt", "chosen", "rejected")}
        absent = [k for k, v in fields.items() if v is None]
        if absent:
            raise ToolError(f"{where} has no {', '.join(absent)} (a preference row needs all three)", DATASET_HINT)
        if not (fields["chosen"] or "").strip() or not (fields["rejected"] or "").strip():
            raise ToolError(f"{where}: chosen and rejected must not be empty", DATASET_HINT)
        return Row(index=index, line=line, **fields)  # type: ignore[arg-type]
    prompt, response = _text(item, PROMPT_KEYS, where), _text(item, RESPONSE_KEYS, where)
    if prompt is None and response is None:
        text = _text(item, ("text",), where)
        if text is None:
            keys = ", ".join(map(str, list(item)[:6]))
            raise ToolError(f"{where} has none of instruction, prompt or text (keys: {keys})", DATASET_HINT)
        prompt, response = "", text
    if prompt is None or response is None:
        raise ToolError(
            f"{where} has a {'prompt' if response is None else 'response'} but no "
            f"{'response' if response is None else 'prompt'}",
            DATASET_HINT,
        )
    extra = _text(item, ("input",), where)
    if extra:  # Alpaca rows: the input belongs to the instruction
        prompt = f"{prompt}\n{extra}"
    if not response.strip():
        raise ToolError(f"{where}: the response is empty (nothing to train on)", DATASET_HINT)
    return Row(index=index, line=line, prompt=prompt, response=response)
