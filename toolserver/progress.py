"""Progress for people at a terminal: a tqdm bar on stderr, live event lines beside the result."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


class TerminalProgress:
    """Shows a bar only on an interactive stderr, so scripts and logs get clean output.

    Live lines go to ``lines`` — stdout for a table, stderr when stdout carries JSON for a parser.
    """

    def __init__(self, label: str, *, enabled: bool = True, lines: TextIO | None = None) -> None:
        self._bar: tqdm | None = None
        self._lines = lines or sys.stdout
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(
                total=100,
                desc=label,
                file=sys.stderr,
                leave=False,
                bar_format="{desc} {bar} {percentage:3.0f}% {postfix}",
            )

    def update(self, fraction: float, message: str) -> None:
        if self._bar is None:
            return
        self._bar.n = round(fraction * 100)
        self._bar.set_postfix_str(message[:60], refresh=False)
        self._bar.refresh()

    def line(self, type: str, data: dict[str, Any], text: str | None) -> None:
        """A live event worth a line of its own (e.g. a training signal as it fires)."""
        if text is None:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._lines)
        else:
            print(text, file=self._lines, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
