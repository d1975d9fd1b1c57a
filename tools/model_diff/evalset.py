"""Eval rows for model-diff: JSONL, one probe per line, or the built-in set.

A row is `prompt` with an optional `category` (default "general"), `topic`, `answer` (a short answer) or
`choices` + `answer` (multiple choice), and `paraphrases`; training rows `{instruction, response}` are accepted
too (the response is the reference, scored token by token). A bad row is reported as one line with its line
number and the good rows still run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.model_diff.builtin import ROWS
from toolserver.contract import ToolError, missing

Kind = Literal["choice", "short", "response", "open"]


class EvalRow(BaseModel):
    prompt: str
    category: str = "general"
    topic: str | None = None
    answer: str | None = Field(None, description="short answer, or the correct choice, or a training response")
    choices: list[str] | None = None
    paraphrases: list[str] = Field(default_factory=list)
    kind: Kind = Field(
        description="choice: multiple choice; short: short answer; response: a training row, scored token by "
        "token; open: a prompt alone (the base model's own generation is its reference)"
    )
    line: int | None = Field(None, description="line in the eval file")


class EvalSet(BaseModel):
    source: str = Field(description="the eval file, or 'built-in'")
    rows: list[EvalRow]
    bad_rows: list[str] = Field(default_factory=list, description="'line N: why', for rows that were skipped")


def builtin() -> EvalSet:
    return EvalSet(source="built-in", rows=[_row(r, None) for r in ROWS])


def read_eval(path: str | Path | None) -> EvalSet:
    if path is None:
        return builtin()
    p = Path(path).expanduser()
    if not p.is_file():
        raise ToolError(f"eval file {p} {missing(p) if not p.exists() else 'is not a file'}", "pass a JSONL file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"eval file {p} is unreadable: {e}", "pass a UTF-8 JSONL file") from None
    rows, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            bad.append(f"line {n}: not JSON ({getattr(e, 'msg', 'nested too deeply')})")
            continue
        try:
            rows.append(_row(item, n))
        except ValueError as e:
            bad.append(f"line {n}: {e}")
    if not rows:
        why = f"; first: {bad[0]}" if bad else ""
        raise ToolError(f"eval file {p} has no usable rows{why}", "one JSON object per line with a 'prompt'")
    return EvalSet(source=str(p), rows=rows, bad_rows=bad)


def _row(item: Any, line: int | None) -> EvalRow:
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    if "prompt" not in item and "instruction" in item:
        response = item.get("response")
        if not isinstance(response, str) or not response.strip():
            raise ValueError("an instruction row needs a non-empty string 'response'")
        item = {**item, "prompt": item["instruction"], "answer": response, "kind": "response"}
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    for key in ("category", "topic", "answer"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise ValueError(f"'{key}' must be a string")
    choices, paraphrases = item.get("choices"), item.get("paraphrases", [])
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ValueError("'choices' must be a list of at least two non-empty strings")
        if item.get("answer") not in choices:
            raise ValueError("'answer' must be one of 'choices'")
    if not isinstance(paraphrases, list) or not all(isinstance(x, str) and x.strip() for x in paraphrases):
        raise ValueError("'paraphrases' must be a list of non-empty strings")
    answer = item.get("answer")
    kind = item.get("kind") or ("choice" if choices else "short" if answer else "open")
    return EvalRow(
        prompt=prompt,
        category=item.get("category") or "general",
        topic=item.get("topic"),
        answer=answer,
        choices=choices,
        paraphrases=paraphrases,
        kind=kind,
        line=line,
    )
