"""The runner's link to the web mirror: never fails a tool call, never slows it for long.

Delivery is at-least-once from here and deduplicated on `event_id` by the server, so each event is
stored exactly once. When the mirror is down or slow, events go to an on-disk spool (one per mirror
URL under $TRAINSPECT_HOME/spool, shared by every process, guarded by an fcntl lock) and are
delivered, in order, by whichever client next finds the mirror up — the same process later, or the
next CLI call.

What a down mirror costs. A refused connection (nothing listening) is instant; after any failure the
client backs off (1 s, doubling to 30 s) and only spools. A connect timeout (an unreachable host)
costs `timeout` seconds, so the call that paid one makes no further attempt: its later events are
spooled, and `close()` does not try again. `close()` never spends more than about a second.

The spool is bounded by $TRAINSPECT_SPOOL_MAX_BYTES (default 64 MiB; 0 keeps nothing). Mirroring is
on by default, so a user who never runs `trainspect web` would otherwise pile up every call's events
(a tool.result carries the full result) forever. When an append takes the spool past its bound, the
calls whose latest event is oldest are dropped whole until it fits in 3/4 of the bound (so the file
is rewritten rarely); if the newest call alone is still too big, its oldest events go too. The first
drop in a process is reported in one warning line (stderr unless logging is configured otherwise).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

from toolserver.contract import atomic_write, home, locked
from web_mirror.events import Event
from web_mirror.wire import dumps

log = logging.getLogger("trainspect.mirror")

DEFAULT_URL = "http://127.0.0.1:8002"
BATCH_EVENTS = 500
BATCH_BYTES = 4 * 1024 * 1024
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
DRAIN_BUDGET = 1.0  # seconds a send may spend delivering an older backlog
CLOSE_BUDGET = 1.0  # seconds close() may spend delivering before the process exits
REJECTED = {413, 422}  # too large or invalid: retrying cannot help
SPOOL_MAX_ENV = "TRAINSPECT_SPOOL_MAX_BYTES"
SPOOL_MAX_DEFAULT = 64 * 1024 * 1024
SPOOL_KEEP = 0.75  # after dropping, the spool holds at most this fraction of its bound
REJECTED_MAX = 1024 * 1024  # the dead-letter file keeps its newest half when it outgrows this

_drop_reported = threading.Event()  # "once per process" for the drop warning


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # try again later: down, slow, 5xx, wrong token or URL
    REJECTED = "rejected"  # this event will never be accepted as it is


class Dropped(NamedTuple):
    events: int
    calls: int
    bytes: int


def spool_max_bytes() -> int:
    """The spool's bound from $TRAINSPECT_SPOOL_MAX_BYTES (a whole number of bytes), else 64 MiB."""
    raw = os.environ.get(SPOOL_MAX_ENV, "").strip()
    if not raw:
        return SPOOL_MAX_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        log.warning("%s=%r is not a whole number of bytes; using %d", SPOOL_MAX_ENV, raw, SPOOL_MAX_DEFAULT)
        return SPOOL_MAX_DEFAULT
    return value


class Spool:
    """An append-only JSONL file of undelivered events plus a delivered-up-to byte offset.

    Every read and write happens under an exclusive flock on a sibling lock file, so concurrent
    processes neither interleave lines nor deliver the same events twice. When everything is
    delivered the file is truncated, so "is anything pending" is a cheap stat.
    """

    def __init__(self, directory: Path, url: str, max_bytes: int = SPOOL_MAX_DEFAULT) -> None:
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.dir = directory
        self.max_bytes = max_bytes
        self.path = directory / f"{key}.jsonl"
        self._offset = directory / f"{key}.offset"
        self.rejected = directory / f"{key}.rejected.jsonl"

    def maybe_pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    @contextmanager
    def locked(self) -> Iterator[Spool]:
        with locked(self.path):
            yield self

    # the methods below expect the lock to be held

    def append(self, lines: list[bytes]) -> Dropped | None:
        """Append lines; if that takes the file past the bound, drop the stalest calls (see the module doc)."""
        with open(self.path, "a+b") as f:
            end = f.seek(0, os.SEEK_END)
            torn = end > 0 and os.pread(f.fileno(), 1, end - 1) != b"\n"  # a writer died mid-line
            f.write((b"\n" if torn else b"") + b"".join(line + b"\n" for line in lines))
            size = f.tell()
        return self._shrink() if size > self.max_bytes else None

    def pending(self) -> list[tuple[bytes, int]]:
        """Undelivered lines, each with the offset just past it."""
        if not self.path.exists():
            return []
        start = int(self._offset.read_text() or 0) if self._offset.exists() else 0
        out: list[tuple[bytes, int]] = []
        with open(self.path, "rb") as f:
            f.seek(start)
            pos = start
            for raw in f:
                pos += len(raw)
                if raw.endswith(b"\n") and raw.strip():
                    out.append((raw[:-1], pos))
        return out

    def delivered_up_to(self, offset: int) -> None:
        if offset >= self.path.stat().st_size:
            self.path.write_bytes(b"")
            self._offset.unlink(missing_ok=True)
            return
        atomic_write(self._offset, str(offset).encode())

    def reject(self, line: bytes, reason: str) -> None:
        """Note a refused event in the dead-letter file: why, and which event (not its body, which may be huge)."""
        try:
            ev = json.loads(line)
            who = {k: ev.get(k) for k in ("event_id", "type", "session", "call_id")}
        except (ValueError, AttributeError):
            who = {"line": line[:200].decode("utf-8", "replace")}
        with open(self.rejected, "a", encoding="utf-8") as f:
            f.write(dumps({"ts": time.time(), "reason": reason, "bytes": len(line), **who}) + "\n")
        if self.rejected.stat().st_size > REJECTED_MAX:
            data = self.rejected.read_bytes()
            newer = data[len(data) // 2 :]
            atomic_write(self.rejected, newer[newer.find(b"\n") + 1 :])

    def _shrink(self) -> Dropped:
        """Rewrite the file as its pending lines minus the stalest calls, to fit SPOOL_KEEP of the bound."""
        pending = [line for line, _ in self.pending()]
        calls = [_call_of(line) for line in pending]
        size: dict[str | None, int] = {}  # per call, ordered by its latest event: stalest first
        for line, call in zip(pending, calls, strict=True):
            size[call] = size.pop(call, 0) + len(line) + 1
        total, target = sum(size.values()), int(self.max_bytes * SPOOL_KEEP)
        gone: set[str | None] = set()
        for call in list(size)[:-1]:
            if total <= target:
                break
            gone.add(call)
            total -= size[call]
        kept = [line for line, call in zip(pending, calls, strict=True) if call not in gone]
        first = 0
        while total > target:  # the newest call alone is too big: keep its latest events
            total -= len(kept[first]) + 1
            first += 1
        dropped = Dropped(
            len(pending) - len(kept) + first, len(gone) + (first > 0), sum(len(line) + 1 for line in pending) - total
        )
        atomic_write(self.path, b"".join(line + b"\n" for line in kept[first:]))
        self._offset.unlink(missing_ok=True)
        return dropped


class MirrorClient:
    """Sends events to the mirror; spools them when it is unreachable or slow."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        spool_dir: Path | None = None,
        timeout: float = 0.5,
        spool_max: int | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self.spool = Spool(
            spool_dir or home() / "spool", self.url, spool_max_bytes() if spool_max is None else spool_max
        )
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._backoff = BACKOFF_START
        self._unreachable = False  # the last connect attempt timed out, and nothing has succeeded since
        self._unreachable_call: str | None = None  # the call that paid that timeout: it makes no further attempt

    @classmethod
    def from_env(cls, url: str | None = None, *, disabled: bool = False) -> MirrorClient | None:
        """The client for `url`, else $TRAINSPECT_MIRROR_URL, else the default; None when mirroring is off."""
        if disabled:
            return None
        chosen = url if url is not None else os.environ.get("TRAINSPECT_MIRROR_URL", DEFAULT_URL)
        if not chosen.strip():
            return None
        return cls(chosen.strip(), token=os.environ.get("TRAINSPECT_MIRROR_TOKEN") or None)

    def send(self, event: Event) -> None:
        """Deliver now if the mirror is up and nothing older waits; otherwise spool. Never raises."""
        try:
            line = dumps(event.model_dump()).encode()
            with self._lock:
                if self._may_try(event.call_id) and not self.spool.maybe_pending():
                    outcome, why = self._post([line], event.call_id)
                    if outcome == _Outcome.DELIVERED:
                        return
                    if outcome == _Outcome.REJECTED:
                        with self.spool.locked() as spool:
                            self._reject(spool, line, why)
                        return
                self._spool([line])
                if self._may_try(event.call_id):
                    self._drain(time.monotonic() + DRAIN_BUDGET, event.call_id)
        except Exception as e:  # the mirror is a convenience: it must never break a tool call
            log.warning("web mirror: an event was neither sent nor spooled (%s: %s)", type(e).__name__, e)
            log.debug("web mirror send failure", exc_info=True)

    def flush(self, timeout: float = 2.0) -> bool:
        """Try to deliver everything spooled within `timeout` s (ignoring the back-off); True if nothing is left."""
        try:
            with self._lock:
                return self._drain(time.monotonic() + timeout, None)
        except Exception as e:
            log.warning("web mirror: flush failed (%s: %s)", type(e).__name__, e)
            return False

    def close(self) -> None:
        """Deliver what the mirror takes within CLOSE_BUDGET, then release the connection; the rest stays
        spooled. No attempt at all while backing off or after a connect timeout: an exit never waits on a dead
        mirror."""
        try:
            if not self._unreachable and time.monotonic() >= self._down_until and self.spool.maybe_pending():
                self.flush(CLOSE_BUDGET)
        finally:
            self._http.close()

    def _may_try(self, call_id: str) -> bool:
        return time.monotonic() >= self._down_until and not (self._unreachable and call_id == self._unreachable_call)

    def _spool(self, lines: list[bytes]) -> None:
        with self.spool.locked() as spool:
            dropped = spool.append(lines)
        if dropped and not _drop_reported.is_set():
            _drop_reported.set()
            log.warning(
                "web mirror %s is not taking events and its spool reached its %d-byte bound (%s): dropped the "
                "stalest %d call(s), %d events, %.1f KiB (later drops in this process are not reported)",
                self.url,
                spool.max_bytes,
                SPOOL_MAX_ENV,
                dropped.calls,
                dropped.events,
                dropped.bytes / 1024,
            )

    def _reject(self, spool: Spool, line: bytes, why: str) -> None:
        spool.reject(line, why)
        log.warning("web mirror refused an event (%s); noted in %s", why, spool.rejected)

    def _drain(self, deadline: float, call_id: str | None) -> bool:
        with self.spool.locked() as spool:
            pending = spool.pending()
            i = 0
            while i < len(pending) and time.monotonic() < deadline:
                batch = _batch(pending, i)
                outcome, why = self._post([line for line, _ in batch], call_id, deadline)
                if outcome == _Outcome.REJECTED and len(batch) > 1:
                    batch = batch[:1]  # find the culprit: one at a time
                    outcome, why = self._post([batch[0][0]], call_id, deadline)
                if outcome == _Outcome.TRANSIENT:
                    return False
                if outcome == _Outcome.REJECTED:
                    self._reject(spool, batch[0][0], why)
                i += len(batch)
                spool.delivered_up_to(batch[-1][1])
            return i >= len(pending)

    def _post(self, lines: list[bytes], call_id: str | None, deadline: float | None = None) -> tuple[_Outcome, str]:
        body = b"[" + b",".join(lines) + b"]"
        timeout = self.timeout if deadline is None else min(self.timeout, max(deadline - time.monotonic(), 0.01))
        try:
            r = self._http.post(f"{self.url}/api/events", content=body, timeout=timeout)
        except httpx.ConnectTimeout:
            self._unreachable, self._unreachable_call = True, call_id
            return self._down("connect timeout")
        except httpx.HTTPError as e:
            return self._down(type(e).__name__)
        if r.is_success:
            self._backoff = BACKOFF_START
            self._down_until = 0.0
            self._unreachable = False
            return _Outcome.DELIVERED, ""
        if r.status_code in REJECTED:
            return _Outcome.REJECTED, _refusal(r)
        return self._down(f"HTTP {r.status_code}")

    def _down(self, why: str) -> tuple[_Outcome, str]:
        log.info("web mirror at %s unavailable (%s); spooling for %.0fs", self.url, why, self._backoff)
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return _Outcome.TRANSIENT, why


def _refusal(r: httpx.Response) -> str:
    """The server's reason in one line: HTTP status and, for a validation error, the first field and message."""
    try:
        detail = r.json().get("detail")
    except ValueError:
        detail = r.text[:200]
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        detail = f"{'.'.join(str(p) for p in first.get('loc', []))}: {first.get('msg')}" + (
            f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
        )
    return f"HTTP {r.status_code}: {detail}"


# Spooled lines are Event dumps, whose call_id comes before data, and a JSON string cannot hold an
# unescaped quote: the first match is the event's own call_id, found without parsing a huge result.
_CALL_ID = re.compile(rb'"call_id":("(?:[^"\\]|\\.)*")')


def _call_of(line: bytes) -> str | None:
    m = _CALL_ID.search(line)
    try:
        call = json.loads(m.group(1)) if m else json.loads(line).get("call_id")
    except (ValueError, AttributeError):
        return None  # a torn or foreign line: grouped with the other unreadable ones
    return call if isinstance(call, str) else None


def _batch(pending: list[tuple[bytes, int]], start: int) -> list[tuple[bytes, int]]:
    size, end = 0, start
    while (
        end < len(pending)
        and end - start < BATCH_EVENTS
        and (end == start or size + len(pending[end][0]) < BATCH_BYTES)
    ):
        size += len(pending[end][0])
        end += 1
    return pending[start:end]
