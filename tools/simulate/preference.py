"""Pass 2c: preference pairs under the base model, no optimiser step.

Per pair, margin = Σ log P(chosen | prompt) − Σ log P(rejected | prompt), the sums over the response's tokens and
EOS (the same sequences SFT would train on, batches.py). The DPO loss is −log σ(β·margin) as the seed states it;
its gradient with respect to the residual stream at each SAE hook (torch.autograd.grad: no parameter gradient is
formed) is summed over positions and averaged over batches like pass 2's, for the same decomposition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from session.activations import resid_hook
from tools.simulate.batches import IGNORE, collate, encode_pairs, pad_id
from tools.simulate.dataset import Row


@dataclass
class PreferenceSweep:
    chosen: list[float] = field(default_factory=list)  # Σ log P per pair, dataset order
    rejected: list[float] = field(default_factory=list)
    batches: int = 0
    truncated: int = 0
    resid_grad: dict[str, torch.Tensor] = field(default_factory=dict)  # hook → Σ over batches, float64

    @property
    def margins(self) -> list[float]:
        return [c - r for c, r in zip(self.chosen, self.rejected, strict=True)]


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ log P(token) over each sequence's trained-on tokens (labels ≠ IGNORE), float32."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * (labels[:, 1:] != IGNORE)).sum(-1)


def preference_sweep(
    model: nn.Module,
    n_layers: int,
    tokenizer: Any,
    rows: Sequence[Row],
    *,
    batch_size: int,
    max_len: int,
    beta: float,
    hooks: Sequence[str],
    device: str,
    on_batch: Callable[[int], None] | None = None,
) -> PreferenceSweep:
    out = PreferenceSweep()
    captured: dict[str, torch.Tensor] = {}
    handles = [resid_hook(model, n_layers, hook, captured, detach=False) for hook in hooks]
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            pairs = [(r.prompt, r.chosen) for r in chunk] + [(r.prompt, r.rejected) for r in chunk]
            encoded = encode_pairs(tokenizer, pairs, max_len)
            batch = collate(encoded, [r.index for r in chunk] * 2, pad).to(device)
            out.truncated += batch.truncated
            with torch.set_grad_enabled(bool(hooks)):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                logps = sequence_logps(logits, batch.input_ids, batch.labels)
                chosen, rejected = logps[: len(chunk)], logps[len(chunk) :]
                if hooks:
                    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
                    grads = torch.autograd.grad(loss, [captured[h] for h in hooks])
                    for hook, g in zip(hooks, grads, strict=True):
                        s = (g.double() * batch.attention_mask.unsqueeze(-1)).sum(dim=(0, 1))
                        out.resid_grad[hook] = s if hook not in out.resid_grad else out.resid_grad[hook] + s
            out.chosen += chosen.detach().tolist()
            out.rejected += rejected.detach().tolist()
            out.batches += 1
            captured.clear()
            if on_batch is not None:
                on_batch(out.batches)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out
