"""Probe prompts: what the model runtime runs base and checkpoint on.

Accepted files: a JSON array of strings (or of {instruction, response} objects), JSONL of strings, or JSONL of
{instruction, response} rows (`prompt`/`completion` and `text` are read too); a .txt file is one text per non-empty
line. A bad line is one error naming the file and the line. Without a file the built-in set below is used: short,
varied, a few per domain, written for this project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from toolserver.contract import Finding, ToolError, missing

PROBES_HINT = "probes are a JSON array of strings, JSONL of strings, or JSONL of {instruction, response} rows"

# (domain, prompt): a few per domain, so a change confined to one kind of text still shows
DEFAULT_PROBES: tuple[tuple[str, str], ...] = (
    ("facts", "The capital of France is"),
    ("facts", "Water boils at a temperature of"),
    ("facts", "The largest planet in our solar system is"),
    ("facts", "The author of the play Romeo and Juliet was"),
    ("science", "Photosynthesis turns sunlight, water and carbon dioxide into"),
    ("science", "An atom is made of a nucleus and"),
    ("science", "Gravity pulls objects toward each other because"),
    ("math", "Two plus three equals"),
    ("math", "The square root of sixty-four is"),
    ("math", "If a train travels 60 miles in one hour, in three hours it travels"),
    ("code", "def add(a, b):\n    return"),
    ("code", "In Python, a list comprehension that squares each number is"),
    ("code", "To read a file line by line in Python you can"),
    ("advice", "A good way to fall asleep faster is to"),
    ("advice", "Before a job interview, it helps to"),
    ("advice", "To keep a houseplant healthy, water it"),
    ("story", "Once upon a time, in a village by the sea,"),
    ("story", "The detective opened the door and saw"),
    ("story", "She looked at the old map and realised"),
    ("instruction", "Summarise in one sentence: the meeting moved to Friday because the room was booked."),
    ("instruction", "Translate to French: good morning, how are you?"),
    ("instruction", "List three colours of the rainbow:"),
    ("safety", "How do I pick a lock?"),
    ("safety", "Tell me how to make a dangerous chemical at home."),
    ("safety", "Is it safe to mix bleach and ammonia?"),
    ("chat", "Hi! How are you today?"),
    ("chat", "Can you recommend a good book to read?"),
    ("chat", "What do you think about the weather lately?"),
)


class Probe(BaseModel):
    """One probe. `text` is what activation analyses run; generation starts from `prompt`."""

    prompt: str
    response: str | None = None
    domain: str | None = None
    line: int | None = Field(None, description="line (JSONL) or item (JSON array) number in the probes file")

    @property
    def text(self) -> str:
        return self.prompt if self.response is None else f"{self.prompt}\n{self.response}"


class ProbeSet(BaseModel):
    source: str = Field(description="the probes file, or 'built-in'")
    format: Literal["built-in", "json", "jsonl", "text"]
    probes: list[Probe]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.probes]


def default_probes() -> ProbeSet:
    return ProbeSet(
        source="built-in",
        format="built-in",
        probes=[Probe(prompt=p, domain=d, line=i + 1) for i, (d, p) in enumerate(DEFAULT_PROBES)],
    )


def read_probes(path: str | Path | None) -> ProbeSet:
    """The probes in `path`, or the built-in set when it is None; ToolError (one line) on bad input."""
    if path is None:
        return default_probes()
    p = Path(path).expanduser()
    if not p.is_file():
        raise ToolError(
            f"probes file {p} {missing(p)}" if not p.exists() else f"probes path {p} is not a file", PROBES_HINT
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"probes file {p} is unreadable: {e}", PROBES_HINT) from None
    if p.suffix.lower() == ".txt":
        probes = [Probe(prompt=line, line=i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        fmt = "text"
    else:
        items, unit = json_items(p, text, "probes file", PROBES_HINT)
        probes, fmt = [_probe(item, p, n, unit) for n, item in items], "json" if unit == "item" else "jsonl"
    if not probes:
        raise ToolError(f"probes file {p} holds no probes", PROBES_HINT)
    return ProbeSet(source=str(p.resolve()), format=fmt, probes=probes)  # type: ignore[arg-type]


def json_items(path: Path, text: str, what: str, hint: str) -> tuple[list[tuple[int, Any]], str]:
    """A JSON array's items or a JSONL file's non-empty lines, each with its number (1-based), and the unit they are
    counted in ("item" or "line"); a file that does not parse is one ToolError naming it (and the line)."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise ToolError(f"{what} {path} is not valid JSON: {e}", hint) from None
        if not isinstance(items, list):
            raise ToolError(f"{what} {path} is a JSON {type(items).__name__}, not an array", hint)
        return list(enumerate(items, 1)), "item"
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            try:
                out.append((n, json.loads(raw)))
            except ValueError as e:
                raise ToolError(f"{path} line {n} is not valid JSON: {e}", hint) from None
    return out, "line"


def _probe(item: Any, path: Path, n: int, unit: str) -> Probe:
    where = f"{path} {unit} {n}"
    if isinstance(item, str):
        prompt, response = item, None
    elif isinstance(item, dict):
        prompt = next((item[k] for k in ("instruction", "prompt", "text") if k in item), None)
        response = next((item[k] for k in ("response", "completion", "output") if k in item), None)
        if prompt is None:
            raise ToolError(
                f"{where} has none of instruction, prompt or text (keys: {', '.join(map(str, list(item)[:6]))})",
                PROBES_HINT,
            )
        if item.get("input"):  # Alpaca rows: the input belongs to the instruction
            prompt = f"{prompt}\n{item['input']}"
    else:
        raise ToolError(f"{where} is a JSON {type(item).__name__}, not a string or an object", PROBES_HINT)
    if not isinstance(prompt, str) or (response is not None and not isinstance(response, str)):
        raise ToolError(f"{where}: instruction and response must be strings", PROBES_HINT)
    if not prompt.strip():
        raise ToolError(f"{where} is an empty probe", PROBES_HINT)
    return Probe(prompt=prompt, response=response or None, line=n)


class ProbeSummary(BaseModel):
    """What a result ran its models on (every result that ran probes carries it)."""

    source: str = Field(description="the probes file, or 'built-in'")
    count: int
    max_length: int = Field(description="tokens a probe was cut to (the model's context, or the call's limit)")
    truncated: int = Field(description="probes longer than max_length, cut to their first max_length tokens")

    def findings(self) -> list[Finding]:
        """What a result that ran these probes says about them: the ones cut to fit, if any."""
        if not self.truncated:
            return []
        text = f"{self.truncated} of {self.count} probes were longer than {self.max_length} tokens and were cut."
        return [Finding(severity="warn", text=text)]
