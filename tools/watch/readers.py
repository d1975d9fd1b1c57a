"""Step events from the files training runs actually write: JSONL (our emitters, LLaMA-Factory's
trainer_log.jsonl, wandb history), a Hugging Face trainer_state.json (`log_history`) and a Lightning
metrics.csv. Every reader is incremental: it resumes from a cursor, so follow mode and `since_last`
calls read only what is new.

Rows that carry no training loss (eval rows, end-of-run summaries, other metrics) are counted as
skipped, not errors. A row that claims to be a step but cannot be read (invalid JSON, a loss that is
not a number, a fractional step) is a bad line, reported with its line number and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from tools.watch.snapshot import LOSS_KEYS, StepSnapshot
from toolserver.contract import ToolError

Format = Literal["jsonl", "trainer_state", "csv"]
CHUNK = 8 << 20
FORMAT_HINT = "watch reads JSONL step events, a Hugging Face trainer_state.json or a Lightning metrics.csv"
TOO_DEEP = "nested too deeply to read"
FIRST_LINE_CAP = 64 << 20  # format sniffing reads the first line whole, up to this
HEAD = 4096  # bytes of the file's start remembered, to notice it was truncated or rewritten


class BadLine(BaseModel):
    line: int = Field(description="line number (JSONL, CSV) or log_history entry number (trainer_state.json)")
    error: str


@dataclass
class ReadBatch:
    snapshots: list[tuple[int, StepSnapshot]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    skipped: int = 0  # rows without a training loss
    restarted: bool = False  # the file no longer begins with what was read (truncated, rewritten): read from its start


class Reader(Protocol):
    format: Format

    def read(self, *, final: bool) -> ReadBatch: ...

    def progress(self) -> float: ...

    def cursor(self) -> dict[str, int]: ...


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def parse_row(row: Any, line: int, batch: ReadBatch) -> None:
    """One decoded row → a snapshot, a skip, or a bad line."""
    if not isinstance(row, dict):
        batch.bad.append(BadLine(line=line, error=f"not a JSON object ({type(row).__name__})"))
        return
    if LOSS_KEYS.isdisjoint(row):
        batch.skipped += 1
        return
    try:
        batch.snapshots.append((line, StepSnapshot.model_validate(row)))
    except ValidationError as e:
        batch.bad.append(BadLine(line=line, error=_first_error(e)))
    except RecursionError:
        batch.bad.append(BadLine(line=line, error=TOO_DEEP))


def parse_jsonl_line(raw: bytes, line: int, batch: ReadBatch) -> None:
    text = raw.strip()
    if not text:
        return
    try:  # fast path: pydantic's own JSON parser (accepts NaN/Infinity tokens)
        batch.snapshots.append((line, StepSnapshot.model_validate_json(text)))
        return
    except (ValidationError, RecursionError):
        pass
    try:
        row = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        batch.bad.append(BadLine(line=line, error=f"invalid JSON: {e}"))
        return
    except RecursionError:
        batch.bad.append(BadLine(line=line, error=TOO_DEEP))
        return
    parse_row(row, line, batch)


def _complete(tail: bytes) -> bool:
    """An unterminated last line that is already a whole JSON document (a file not ending in a newline)."""
    try:
        json.loads(tail)
    except (ValueError, RecursionError):
        return False
    return True


class JsonlReader:
    """Tails a JSONL file from a byte offset. A last line without its newline is held back until the
    writer completes it, unless it is already whole JSON; with final=True it is parsed as it stands."""

    format: Format = "jsonl"

    def __init__(self, path: Path, offset: int = 0, line: int = 0, unterminated: int = 0, head: str = "") -> None:
        self.path, self.offset, self.line = path, offset, line
        self._head = bytes.fromhex(head)  # the file's first bytes as read (up to HEAD)
        self._size = 0
        self._more = False  # the last read stopped at a chunk boundary, not at the end of the file
        self._unterminated = bool(unterminated)  # the last line was taken before its newline arrived

    def read(self, *, final: bool, max_bytes: int = CHUNK) -> ReadBatch:
        batch = ReadBatch()
        with open(self.path, "rb") as f:
            fd = f.fileno()
            self._size = os.fstat(fd).st_size
            if self.offset and (self._size < self.offset or os.pread(fd, len(self._head), 0) != self._head):
                # truncated or rewritten (a restarted StepLogger truncates its file): start again from the top
                batch.restarted = True
                self.offset, self.line, self._unterminated, self._head = 0, 0, False, b""
            while not self._consume(os.pread(fd, max_bytes, self.offset), batch, final):
                max_bytes *= 4  # one line longer than the chunk: read it whole
            if len(self._head) < HEAD:  # the file's first bytes as consumed, to notice a rewrite next time
                self._head = os.pread(fd, min(self.offset, HEAD), 0)
        return batch

    def _consume(self, data: bytes, batch: ReadBatch, final: bool) -> bool:
        """Parse the complete lines of `data` (read at the offset); False when it holds no line end and more of
        the file follows (the caller reads more), else True."""
        if self._unterminated and data:
            skip = 2 if data.startswith(b"\r\n") else 1 if data[:1] == b"\n" else 0  # ends a line already read
            self.offset, data, self._unterminated = self.offset + skip, data[skip:], False
        at_eof = self.offset + len(data) >= self._size
        self._more = not at_eof
        end = data.rfind(b"\n") + 1
        if at_eof and end < len(data) and (final or _complete(data[end:])):
            end = len(data)
            self._unterminated = True
        if end == 0:
            return not (data and not at_eof)
        chunk = data[:end]
        lines = chunk.split(b"\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        for raw in lines:
            self.line += 1
            parse_jsonl_line(raw, self.line, batch)
        self.offset += end
        return True

    def pending(self) -> bool:
        """More of the file remains beyond this chunk (a replay reads in chunks)."""
        return self._more

    def progress(self) -> float:
        return self.offset / self._size if self._size else 1.0

    def cursor(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "line": self.line,
            "unterminated": int(self._unterminated),
            "head": self._head.hex(),
        }


class TableReader:
    """trainer_state.json and metrics.csv: parsed whole (trainers rewrite them), rows after the cursor
    are new. In follow mode an unreadable file is taken to be mid-write and retried."""

    def __init__(self, path: Path, fmt: Format, consumed: int = 0) -> None:
        self.path, self.format, self.consumed = path, fmt, consumed
        self._stamp: tuple[int, int] | None = None

    def read(self, *, final: bool) -> ReadBatch:
        st = self.path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp == self._stamp and not final:
            return ReadBatch()
        try:
            rows = self._rows(final)
        except ToolError:
            if final:
                raise
            return ReadBatch()  # mid-write: try again on the next change
        self._stamp = stamp
        batch = ReadBatch()
        if len(rows) < self.consumed:  # rewritten shorter: a new run in the same file
            batch.restarted, self.consumed = True, 0
        for line, row in rows[self.consumed :]:
            parse_row(row, line, batch)
        self.consumed = max(self.consumed, len(rows))
        return batch

    def _rows(self, final: bool) -> list[tuple[int, Any]]:
        text = self.path.read_bytes().decode("utf-8-sig", errors="replace")  # a BOM is not part of the header
        if self.format == "csv":
            if not final:
                text = text[: text.rfind("\n") + 1]  # a row still being written waits
            return csv_rows(text)
        try:
            state = json.loads(text)
        except ValueError as e:
            raise ToolError(f"{self.path} is not valid JSON: {e}", FORMAT_HINT) from None
        except RecursionError:
            raise ToolError(f"{self.path} is {TOO_DEEP}", FORMAT_HINT) from None
        history = state.get("log_history") if isinstance(state, dict) else None
        if not isinstance(history, list):
            raise ToolError(f"{self.path} has no log_history list", "expected a Hugging Face trainer_state.json")
        # only entries with a training loss are steps (eval rows and the end-of-run summary are skipped)
        return [(i, e if not isinstance(e, dict) or "loss" in e else {}) for i, e in enumerate(history, 1)]

    def pending(self) -> bool:
        return False

    def progress(self) -> float:
        return 1.0

    def cursor(self) -> dict[str, int]:
        return {"consumed": self.consumed}


def csv_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    """CSV rows as dicts with empty cells dropped and numeric cells as numbers, keyed by line number."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        rows.append((reader.line_num, {k: _number(v) for k, v in row.items() if k and v not in ("", None)}))
    return rows


def _number(cell: Any) -> Any:
    if not isinstance(cell, str):
        return cell
    try:
        return float(cell)
    except ValueError:
        return cell


def detect_format(path: Path) -> Format:
    """By extension, then by content (real trainer_state files are not always named .json)."""
    if path.suffix.lower() == ".csv":
        return "csv"
    with open(path, "rb") as f:
        first = f.readline(FIRST_LINE_CAP).removeprefix(b"\xef\xbb\xbf").strip()  # the whole first line, however long
        f.seek(0)
        head = f.read(64 << 10).removeprefix(b"\xef\xbb\xbf")
    try:
        row = json.loads(first) if first else None
    except (ValueError, RecursionError):
        row = None
    if isinstance(row, dict):
        return "trainer_state" if "log_history" in row else "jsonl"
    if head.lstrip().startswith(b"{"):
        return "trainer_state"  # a pretty-printed JSON document
    if b"," in first and b"step" in first.lower():
        return "csv"
    return "jsonl"


def open_reader(path: Path, fmt: Format, cursor: dict[str, Any] | None = None) -> JsonlReader | TableReader:
    cursor = cursor or {}
    if fmt == "jsonl":
        return JsonlReader(
            path, cursor.get("offset", 0), cursor.get("line", 0), cursor.get("unterminated", 0), cursor.get("head", "")
        )
    return TableReader(path, fmt, cursor.get("consumed", 0))
