"""Seeded surface corruptions of a prompt (HELM-style, written here): a typo by a neighbouring key, a case
change, extra whitespace, a filler word. Each is deterministic for (text, seed, index) and never returns its
input unchanged."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
FILLERS = ("um,", "well,", "so,", "like,", "basically,")


def _neighbours() -> dict[str, str]:
    out: dict[str, str] = {}
    for r, row in enumerate(_ROWS):
        for c, ch in enumerate(row):
            near = [row[c + d] for d in (-1, 1) if 0 <= c + d < len(row)]
            near += [_ROWS[r + d][c] for d in (-1, 1) if 0 <= r + d < len(_ROWS) and c < len(_ROWS[r + d])]
            out[ch] = "".join(near)
    return out


NEIGHBOURS = _neighbours()


def typo(text: str, rng: random.Random) -> str:
    """One letter replaced by a key next to it on a QWERTY keyboard (case kept)."""
    spots = [i for i, ch in enumerate(text) if ch.lower() in NEIGHBOURS]
    if not spots:
        return text + "."
    i = rng.choice(spots)
    repl = rng.choice(NEIGHBOURS[text[i].lower()])
    return text[:i] + (repl.upper() if text[i].isupper() else repl) + text[i + 1 :]


def case(text: str, rng: random.Random) -> str:
    """The whole prompt lower-cased, or upper-cased when it already is lower case."""
    lowered = text.lower()
    return lowered if lowered != text else text.upper() if text.upper() != text else text + " "


def whitespace(text: str, rng: random.Random) -> str:
    """One space between words doubled (or a trailing space when there is none)."""
    spots = [i for i, ch in enumerate(text) if ch == " "]
    if not spots:
        return text + " "
    i = rng.choice(spots)
    return text[:i] + "  " + text[i + 1 :]


def filler(text: str, rng: random.Random) -> str:
    """A filler word put in front of the prompt."""
    word = rng.choice(FILLERS)
    return f"{word.capitalize()} {text[:1].lower()}{text[1:]}"


PERTURBATIONS: tuple[tuple[str, Callable[[str, random.Random], str]], ...] = (
    ("typo", typo),
    ("case", case),
    ("whitespace", whitespace),
    ("filler", filler),
)


def perturb(text: str, seed: int, n: int) -> list[tuple[str, str]]:
    """n corruptions of text as (name, corrupted), cycling through the kinds; the same for the same seed."""
    out = []
    for i in range(n):
        name, fn = PERTURBATIONS[i % len(PERTURBATIONS)]
        rng = random.Random(zlib.crc32(f"{seed}:{i}:{text}".encode()))
        changed = fn(text, rng)
        out.append((name, changed if changed != text else text + " "))
    return out
