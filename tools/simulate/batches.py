"""Training sequences as the fine-tune would see them, in padded batches.

A sequence is the prompt's tokens (with whatever special tokens the tokenizer adds to a text, e.g. Llama's
BOS) followed by the response's tokens and the EOS token (when the tokenizer has one): the usual SFT layout
(TRL's prompt-completion format). Only response tokens and the EOS are trained on — labels are -100 over the
prompt and the padding — so a {text} row (empty prompt) trains on every token. Sequences longer than
`max_len` lose their tail and are counted. Right padding; positions are the default 0..n−1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100


@dataclass
class TrainBatch:
    rows: list[int]  # dataset row indices, one per sequence
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    labels: torch.Tensor  # [batch, seq]: the token where it is trained on, else IGNORE
    truncated: int  # sequences cut to max_len

    def to(self, device: str) -> TrainBatch:
        return TrainBatch(
            self.rows, self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.truncated
        )

    @property
    def target_tokens(self) -> int:
        """Tokens the loss is taken over (the labels shifted by one lose each sequence's first position)."""
        return int((self.labels[:, 1:] != IGNORE).sum())


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_len: int) -> list[tuple[list[int], int, bool]]:
    """(token ids, prompt length, truncated?) per (prompt, response) pair, tokenised in two batched calls."""
    prompts = [p for p, _ in pairs]
    responses = [r for _, r in pairs]
    p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"] if any(prompts) else [[] for _ in pairs]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for prompt, p, r in zip(prompts, p_ids, r_ids, strict=True):
        p = list(p) if prompt else []
        if not prompt and tokenizer.bos_token_id is not None and _adds_bos(tokenizer):
            p = [tokenizer.bos_token_id]  # a {text} row starts the way any text does for this tokenizer
        ids = p + list(r) + ([eos] if eos is not None else [])
        out.append((ids[:max_len], min(len(p), max_len), len(ids) > max_len))
    return out


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def collate(encoded: Sequence[tuple[list[int], int, bool]], rows: list[int], pad: int) -> TrainBatch:
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    for i, (ids, prompt_len, _) in enumerate(encoded):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = t
        mask[i, : len(ids)] = 1
        labels[i, prompt_len : len(ids)] = t[prompt_len:]
    return TrainBatch(rows, input_ids, mask, labels, sum(cut for _, _, cut in encoded))


def batches(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], rows: Sequence[int], batch_size: int, max_len: int
) -> Iterator[TrainBatch]:
    """The dataset in order, batch_size sequences at a time (the last batch may be smaller)."""
    pad = pad_id(tokenizer)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        yield collate(encode_pairs(tokenizer, chunk, max_len), list(rows[start : start + batch_size]), pad)
