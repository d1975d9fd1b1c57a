"""Greedy generation for the behavioural tools, batched with left padding.

Through the bridge each step runs the whole sequence so far, without a KV cache: on TransformerLens 3.9 the
bridge's cached decoding gives wrong greedy tokens (measured on tiny GPT-2 and Llama fine-tunes, through both
`TransformerBridge.generate` and the wrapped model's own `generate`), while full forwards match `transformers`'
`generate` token for token (tests/test_runtime.py pins it); that costs O(n²) in the generated length. A model run
through transformers itself (a peft-applied adapter, the merge gate's models) decodes with transformers' own KV
cache, one new token per step (the same tokens, pinned by the same test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field

from session.activations import position_ids, token_batches
from session.models import LoadedModel
from toolserver.contract import ToolError


class Generation(BaseModel):
    prompt: str
    text: str = Field(description="the completion, decoded without special tokens")
    tokens: list[int] = Field(description="generated token ids (the EOS that ended it included)")
    logprobs: list[float] = Field(description="log-probability the model gave each generated token (natural log)")
    stopped: bool = Field(description="ended on EOS before max_new_tokens")
    prompt_truncated: bool = False

    @property
    def content(self) -> list[int]:
        """The generated tokens without the EOS that ended them."""
        return self.tokens[:-1] if self.stopped else self.tokens


def logits(model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits at every position, [batch, seq, vocab], for a possibly left-padded batch."""
    positions = position_ids(attention_mask)
    with torch.no_grad():
        if model.backend == "bridge":
            return model.model(input_ids, attention_mask=attention_mask, position_ids=positions, return_type="logits")
        return model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits


def _next_logits(model: LoadedModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(ids so far, mask so far) -> the last position's logits. transformers: the prompt once, then each new token
    against the KV cache; the bridge: the whole sequence every step (see the module doc)."""
    if model.backend == "bridge":
        return lambda ids, mask: logits(model, ids, mask)[:, -1]
    state: dict[str, Any] = {"past": None}

    def step(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = position_ids(mask)
        if state["past"] is not None:  # only the token appended since the last call
            ids, positions = ids[:, -1:], positions[:, -1:]
        with torch.no_grad():
            out = model.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=state["past"],
                use_cache=True,
            )
        state["past"] = out.cache  # transformers 5: `cache` (past_key_values is deprecated)
        return out.logits[:, -1]

    return step


def greedy(
    model: LoadedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    max_prompt_tokens: int | None = None,
) -> list[Generation]:
    """The argmax continuation of each prompt, up to max_new_tokens or the tokenizer's EOS."""
    if model.kind != "llm":
        raise ToolError("generation needs a causal LM; this session's model is an encoder", "use an LLM session")
    tok = model.tokenizer
    eos = tok.eos_token_id
    room = model.n_ctx - max_new_tokens
    if room < 1:
        raise ToolError(f"max_new_tokens {max_new_tokens} leaves no room in the model's {model.n_ctx}-token context")
    limit = min(room, max_prompt_tokens or room)
    out: list[Generation] = []
    for batch in token_batches(tok, prompts, batch_size=batch_size, max_length=limit, padding_side="left"):
        ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new: list[torch.Tensor] = []
        chosen: list[torch.Tensor] = []
        step = _next_logits(model)
        for _ in range(max_new_tokens):
            last = step(ids, mask).float()
            nxt = last.argmax(-1)
            chosen.append(torch.log_softmax(last, -1).gather(-1, nxt[:, None])[:, 0])
            nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
            new.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            done |= nxt == eos if eos is not None else torch.zeros_like(done)
            if bool(done.all()):
                break
        generated = torch.stack(new, 1).tolist() if new else [[] for _ in batch.index]
        logprobs = torch.stack(chosen, 1).tolist() if chosen else [[] for _ in batch.index]
        for row, i in enumerate(batch.index):
            tokens = generated[row]
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos) + 1]
            out.append(
                Generation(
                    prompt=prompts[i],
                    text=tok.decode(tokens, skip_special_tokens=True),
                    tokens=tokens,
                    logprobs=logprobs[row][: len(tokens)],
                    stopped=eos is not None and bool(tokens) and tokens[-1] == eos,
                    prompt_truncated=batch.lengths[row] > limit,
                )
            )
    return out
