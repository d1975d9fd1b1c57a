"""What model-diff measures of one model on the eval rows: teacher-forced sequences and greedy generations.

Every row is scored on a reference continuation: its answer (or each choice), a training row's response, or —
for a prompt alone — the base model's own greedy generation. Each sequence is the prompt's tokens (the
tokenizer's, special tokens included) followed by the continuation's (tokenized on its own with a leading
space, as lm-eval-harness does), so a continuation's probability is Σ log p over its own tokens. The same
forward pass gives the next-token distribution at the answer position (the prompt's last token), which the
consistency score compares across paraphrases. Sequences run in padded batches in row order; a row's anchor
distribution is kept only until its last comparison is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from session.generation import Generation, greedy, logits
from session.models import LoadedModel
from tools.model_diff.evalset import EvalRow
from tools.model_diff.perturb import perturb

Role = Literal["clean", "perturbed", "paraphrase"]


@dataclass
class Seq:
    row: int
    role: Role
    variant: int  # which perturbation or paraphrase (0 for clean)
    option: int | None  # the choice scored (multiple choice), else None
    context: list[int]
    cont: list[int]
    compare: bool  # its answer-position distribution is compared with the row's clean one (consistency)


@dataclass
class RowScores:
    """One model on one row."""

    clean: list[float] = field(default_factory=list)  # Σ log p of the continuation (one per choice for MC)
    perturbed: list[list[float]] = field(default_factory=list)  # per perturbation, the same
    kl: list[float] = field(default_factory=list)  # KL(anchor ‖ variant) per compared variant, nats
    entropy: float | None = None  # of the anchor distribution, nats
    token_conf: list[float] = field(default_factory=list)  # response rows: max p at each response token
    token_correct: list[bool] = field(default_factory=list)  # argmax = the response token


def encode_continuation(tok: object, text: str) -> list[int]:
    return tok(" " + text.strip(), add_special_tokens=False)["input_ids"]  # type: ignore[operator]


def build_sequences(
    tok: object, rows: Sequence[EvalRow], references: Sequence[list[int] | None], perturbations: int, seed: int
) -> list[Seq]:
    """Every sequence both models run, in row order: clean first, then perturbations, then paraphrases.
    Consistency compares the paraphrases when a row has them, else the perturbations."""

    def ids(text: str) -> list[int]:
        return tok(text)["input_ids"]  # type: ignore[operator]

    seqs: list[Seq] = []
    for r, (row, ref) in enumerate(zip(rows, references, strict=True)):
        conts = [encode_continuation(tok, c) for c in row.choices] if row.choices else [ref] if ref else []
        if not conts:
            continue
        prompts: list[tuple[Role, int, str]] = [("clean", 0, row.prompt)]
        prompts += [("perturbed", i, text) for i, (_, text) in enumerate(perturb(row.prompt, seed, perturbations))]
        prompts += [("paraphrase", i, text) for i, text in enumerate(row.paraphrases)]
        compared: Role = "paraphrase" if row.paraphrases else "perturbed"
        for role, variant, text in prompts:
            context = ids(text)
            for o, cont in enumerate(conts):
                seqs.append(
                    Seq(r, role, variant, o if row.choices else None, context, cont, role == compared and o == 0)
                )
    return seqs


def score(
    model: LoadedModel,
    seqs: Sequence[Seq],
    n_rows: int,
    response_rows: set[int],
    batch_size: int,
    on_batch: Callable[[int, int], None] = lambda i, n: None,
) -> list[RowScores]:
    """Teacher-forced passes over every sequence (see the module doc)."""
    out = [RowScores() for _ in range(n_rows)]
    pending = {}  # row -> comparisons still to score
    for s in seqs:
        pending[s.row] = pending.get(s.row, 0) + s.compare
    anchors: dict[int, torch.Tensor] = {}
    n_batches = -(-len(seqs) // batch_size)
    for b in range(n_batches):
        on_batch(b, n_batches)
        batch = seqs[b * batch_size : (b + 1) * batch_size]
        width = max(len(s.context) + len(s.cont) for s in batch)
        ids = torch.full((len(batch), width), model.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(batch):
            row = s.context + s.cont
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logp = torch.log_softmax(logits(model, ids.to(model.device), mask.to(model.device)).double(), -1).cpu()
        for i, s in enumerate(batch):
            start = len(s.context) - 1
            steps = logp[i, start : start + len(s.cont)]
            target = torch.tensor(s.cont)
            total = float(steps.gather(-1, target[:, None]).sum())
            rs = out[s.row]
            if s.role == "clean":
                rs.clean.append(total)
                if s.option in (None, 0):
                    anchor = steps[0]
                    if pending[s.row]:
                        anchors[s.row] = anchor
                    rs.entropy = float(-(anchor.exp() * anchor).sum())
                if s.row in response_rows:
                    best = steps.max(-1)
                    rs.token_conf = best.values.exp().tolist()
                    rs.token_correct = (best.indices == target).tolist()
            elif s.role == "perturbed":
                if s.option in (None, 0):
                    rs.perturbed.append([])
                rs.perturbed[-1].append(total)
            if s.compare:
                anchor = anchors[s.row]
                rs.kl.append(float((anchor.exp() * (anchor - steps[0])).sum()))
                pending[s.row] -= 1
                if pending[s.row] == 0:
                    del anchors[s.row]
    return out


def generate(model: LoadedModel, rows: Sequence[EvalRow], max_new_tokens: int, batch_size: int) -> list[Generation]:
    return greedy(model, [r.prompt for r in rows], max_new_tokens=max_new_tokens, batch_size=batch_size)


def references(
    tok: object, rows: Sequence[EvalRow], base_gens: Sequence[Generation]
) -> tuple[list[list[int]], list[list[int] | None]]:
    """Each row's answer tokens ([] without one) and the continuation its sequences score: the answer or training
    response, else the base model's own generation; None for multiple choice (each choice is scored instead)."""
    answers = [encode_continuation(tok, r.answer) if r.answer else [] for r in rows]
    refs = [None if r.choices else answers[i] or base_gens[i].content or None for i, r in enumerate(rows)]
    return answers, refs
