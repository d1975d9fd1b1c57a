"""The runner's link to the web mirror: never slows or fails a tool call, never loses an event.

Delivery is at-least-once from here and deduplicated on `event_id` by the server, so each event is
stored exactly once. When the mirror is down or slow, events go to an on-disk spool (one per mirror
URL, shared by every process, guarded by an fcntl lock) and are delivered, in order, by whichever
client next finds the mirror up — the same process later, or the next CLI call.
"""
from __future__ import annotations

import enum
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from session.state import home
from web_mirror.events import Event
from web_mirror.wire import dumps

log = logging.getLogger("trainspect.mirror")

DEFAULT_URL = "http://127.0.0.1:8002"
BATCH_EVENTS = 500
BATCH_BYTES = 4 * 1024 * 1024
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
DRAIN_BUDGET = 1.0  # seconds a send may spend delivering an older backlog
REJECTED = {413, 422}  # too large or invalid: retrying cannot help


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # try again later: down, slow, 5xx, wrong token or URL
    REJECTED = "rejected"  # this event will never be accepted as it is


class Spool:
    """An append-only JSONL file of undelivered events plus a delivered-up-to byte offset.

    Every read and write happens under an exclusive flock on a sibling lock file, so concurrent
    processes neither interleave lines nor deliver the same events twice. When everything is
    delivered the file is truncated, so "is anything pending" is a cheap stat.
    """

    def __init__(self, directory: Path, url: str) -> None:
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.dir = directory
        self.path = directory / f"{key}.jsonl"
        self._offset = directory / f"{key}.offset"
        self._lockfile = directory / f"{key}.lock"
        self.rejected = directory / f"{key}.rejected.jsonl"

    def maybe_pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    @contextmanager
    def locked(self) -> Iterator["Spool"]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self._lockfile, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # the methods below expect the lock to be held

    def append(self, lines: list[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))

    def pending(self) -> list[tuple[str, int]]:
        """Undelivered lines, each with the offset just past it."""
        if not self.path.exists():
            return []
        start = int(self._offset.read_text() or 0) if self._offset.exists() else 0
        out: list[tuple[str, int]] = []
        with open(self.path, "rb") as f:
            f.seek(start)
            pos = start
            for raw in f:
                pos += len(raw)
                if raw.endswith(b"\n") and raw.strip():
                    out.append((raw.decode("utf-8", "replace").rstrip("\n"), pos))
        return out

    def delivered_up_to(self, offset: int) -> None:
        if offset >= self.path.stat().st_size:
            self.path.write_bytes(b"")
            self._offset.unlink(missing_ok=True)
            return
        tmp = self._offset.with_suffix(".tmp")
        tmp.write_text(str(offset))
        tmp.replace(self._offset)

    def reject(self, line: str, reason: str) -> None:
        with open(self.rejected, "a", encoding="utf-8") as f:
            f.write(dumps({"reason": reason, "event": line}) + "\n")


class MirrorClient:
    """Sends events to the mirror; spools them when it is unreachable or slow."""

    def __init__(self, url: str, *, token: str | None = None, spool_dir: Path | None = None, timeout: float = 0.5) -> None:
        self.url = url.rstrip("/")
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self.spool = Spool(spool_dir or home() / "spool", self.url)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._backoff = BACKOFF_START

    @classmethod
    def from_env(cls, url: str | None = None, *, disabled: bool = False) -> "MirrorClient | None":
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
            line = dumps(event.model_dump())
            with self._lock:
                if not self.spool.maybe_pending() and time.monotonic() >= self._down_until:
                    if self._post([line]) == _Outcome.DELIVERED:
                        return
                with self.spool.locked() as spool:
                    spool.append([line])
                if time.monotonic() >= self._down_until:
                    self._drain(time.monotonic() + DRAIN_BUDGET)
        except Exception:  # the mirror is a convenience: it must never break a tool call
            log.warning("web mirror: could not send or spool an event", exc_info=True)

    def flush(self, timeout: float = 2.0) -> bool:
        """Try to deliver everything spooled (ignoring the back-off); True if nothing is left."""
        try:
            with self._lock:
                return self._drain(time.monotonic() + timeout)
        except Exception:
            log.warning("web mirror: flush failed", exc_info=True)
            return False

    def close(self) -> None:
        """Deliver what the mirror will take now, then release the connection; the rest stays spooled."""
        self.flush(timeout=1.0)
        self._http.close()

    def _drain(self, deadline: float) -> bool:
        with self.spool.locked() as spool:
            pending = spool.pending()
            i = 0
            while i < len(pending) and time.monotonic() < deadline:
                batch = _batch(pending, i)
                outcome = self._post([line for line, _ in batch])
                if outcome == _Outcome.REJECTED and len(batch) > 1:
                    batch = batch[:1]  # find the culprit: one at a time
                    outcome = self._post([batch[0][0]])
                if outcome == _Outcome.TRANSIENT:
                    return False
                if outcome == _Outcome.REJECTED:
                    spool.reject(batch[0][0], "refused by the mirror")
                    log.warning("web mirror refused an event; kept in %s", spool.rejected)
                i += len(batch)
                spool.delivered_up_to(batch[-1][1])
            return i >= len(pending)

    def _post(self, lines: list[str]) -> _Outcome:
        body = ("[" + ",".join(lines) + "]").encode()
        try:
            r = self._http.post(f"{self.url}/api/events", content=body)
        except httpx.HTTPError as e:
            return self._down(f"{type(e).__name__}")
        if r.is_success:
            self._backoff = BACKOFF_START
            self._down_until = 0.0
            return _Outcome.DELIVERED
        if r.status_code in REJECTED:
            return _Outcome.REJECTED
        return self._down(f"HTTP {r.status_code}")

    def _down(self, why: str) -> _Outcome:
        log.info("web mirror at %s unavailable (%s); spooling for %.0fs", self.url, why, self._backoff)
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return _Outcome.TRANSIENT


def _batch(pending: list[tuple[str, int]], start: int) -> list[tuple[str, int]]:
    size, end = 0, start
    while end < len(pending) and end - start < BATCH_EVENTS and (end == start or size + len(pending[end][0]) < BATCH_BYTES):
        size += len(pending[end][0])
        end += 1
    return pending[start:end]
