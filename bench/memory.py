"""Process memory for the benchmarks: anonymous RSS (what a computation allocates, not the file pages it maps)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path


def rss_anon_mb() -> float:
    return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


class PeakAnon:
    """Samples RssAnon every 2 ms in a thread; peak is the largest value seen."""

    def __init__(self) -> None:
        self.peak = rss_anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_mb())
            time.sleep(0.002)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mb())
