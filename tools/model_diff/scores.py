"""The three behavioural scores and the per-row predictions, as pure functions of what scoring measured (the
formulas are stated in models.DEFINITIONS, and pinned by tests/test_model_diff.py)."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from session.generation import Generation
from tools.model_diff.evalset import EvalRow
from tools.model_diff.hedges import hedge
from tools.model_diff.models import ENTROPY_FLOOR, HEDGE_WEIGHT, LENGTH_WEIGHT, REGRESSION_PP, Flag
from tools.model_diff.scoring import RowScores


def consistency(rows: Sequence[RowScores]) -> float | None:
    per_row = [
        min(1.0, max(0.0, 1 - (sum(r.kl) / len(r.kl)) / max(r.entropy, ENTROPY_FLOOR)))
        for r in rows
        if r.kl and r.entropy is not None
    ]
    return sum(per_row) / len(per_row) if per_row else None


def _softmax(logprobs: Sequence[float]) -> list[float]:
    top = max(logprobs)
    e = [math.exp(x - top) for x in logprobs]
    return [x / sum(e) for x in e]


def answer_confidence(row: EvalRow, logprobs: Sequence[float]) -> float:
    """p(reference | prompt): the joint probability, or the correct option's normalised over the options."""
    if row.choices:
        return _softmax(logprobs)[row.choices.index(row.answer)]  # type: ignore[arg-type]
    return math.exp(logprobs[0])


def robustness(rows: Sequence[EvalRow], scored: Sequence[RowScores]) -> float | None:
    clean, drops = [], []
    for row, s in zip(rows, scored, strict=True):
        if not s.clean:
            continue
        c = answer_confidence(row, s.clean)
        clean.append(c)
        drops += [max(0.0, c - answer_confidence(row, p)) for p in s.perturbed]
    if not clean or not drops or sum(clean) == 0:
        return None
    mean_clean = sum(clean) / len(clean)
    return min(1.0, max(0.0, 1 - (sum(drops) / len(drops)) / mean_clean))


def suppression(
    gens: Sequence[Generation], reference_lengths: Sequence[int | None]
) -> tuple[float | None, list[str | None]]:
    """The score and, per generation, the hedge phrase it matched."""
    if not gens:
        return None, []
    phrases = [hedge(g.text) for g in gens]
    penalties = [max(0.0, 1 - len(g.content) / n) for g, n in zip(gens, reference_lengths, strict=True) if n]
    length = sum(penalties) / len(penalties) if penalties else 0.0
    hedged = sum(p is not None for p in phrases) / len(gens)
    return LENGTH_WEIGHT * length + HEDGE_WEIGHT * hedged, phrases


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


@dataclass
class Prediction:
    """A row's calibration predictions (one, or one per response token) and its row-level confidence."""

    confidences: list[float]
    correct: list[bool]
    confidence: float  # the row's (the mean over tokens for training rows)
    answer: str  # what the model answered


def prediction(row: EvalRow, s: RowScores, gen: Generation, n_answer: int, decode: object) -> Prediction | None:
    if row.kind == "choice" and s.clean:
        probs = _softmax(s.clean)
        chosen = max(range(len(probs)), key=probs.__getitem__)
        return Prediction([probs[chosen]], [row.choices[chosen] == row.answer], probs[chosen], row.choices[chosen])  # type: ignore[index]
    if row.kind == "short" and n_answer:
        tokens = gen.tokens[:n_answer]
        text = decode(tokens, skip_special_tokens=True)  # type: ignore[operator]
        conf = math.exp(sum(gen.logprobs[:n_answer]))
        return Prediction([conf], [normalise(text) == normalise(row.answer or "")], conf, text.strip())
    if row.kind == "response" and s.token_conf:
        conf = sum(s.token_conf) / len(s.token_conf)
        return Prediction(s.token_conf, s.token_correct, conf, gen.text.strip())
    return None


def flags(
    prior: dict[str, dict[str, float | None]] | None,
    current: dict[str, dict[str, float | None]],
    prior_name: str,
    higher_is_better: dict[str, bool],
) -> list[Flag]:
    """Category scores worse than the prior run's by more than REGRESSION_PP (a fall; a rise for suppression)."""
    if prior is None:
        return []
    out = []
    for category, scores in current.items():
        for name, value in scores.items():
            before = prior.get(category, {}).get(name)
            if value is None or before is None:
                continue
            worse = (before - value) if higher_is_better[name] else (value - before)
            if worse > REGRESSION_PP:
                out.append(
                    Flag(
                        category=category,
                        score=name,
                        prior=before,
                        current=value,
                        change=value - before,
                        prior_run=prior_name,
                    )  # fmt: skip
                )
    return out
