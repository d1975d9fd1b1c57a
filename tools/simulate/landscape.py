"""Passes 1 and 2: one sweep over the dataset's batches at the base weights, no optimiser step.

Pass 1 (forward only, under no_grad when pass 2 does not run) sums each SAE's feature activations over the real
tokens at its hook, the first token of each sequence left out (its outlier norm dominates SAE activations, as
in sae diff). Pass 2 adds the backward of each batch's training loss (the mean cross-entropy over its target
tokens, exactly what a training step would differentiate) and reads, per batch:
- the gradient norm of every parameter-owning module and the largest per-parameter norm (watch's GradNormMeter,
  so the names and the grouping are a live run's), fed to watch's signal engine as one step per batch;
- the gradient with respect to the residual stream at each SAE hook, summed over the batch's positions (the
  gradient of the batch loss with respect to one vector added to the residual at every position);
- the parameter gradients, added into one float32 sum per tensor (their mean is what part 2 needs); each batch's
  `.grad` is then freed, so memory is one batch's activations, its gradients and that sum.
When both passes run they share the forward. Dropout is off (eval mode): the landscape is measured, not sampled.

Under torchrun (session.distributed) every rank builds and reads every batch as one process does, so
batch numbers, skipped and truncated batches are the one-process ones on every rank, and runs the forward and
backward of its share only: the k-th batch with a target token (0-based, dataset order) is rank k mod world's,
as the curvature batches are (hessian.curvature). The sums (parameter gradients; each hook's activations,
tokens and residual gradient; the loss and token totals) are then all-reduced and the per-batch readings
gathered back into batch order, so every rank returns the one-process Sweep, up to the order the float sums
are taken in (~1e-7 relative).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from session import distributed
from session.activations import resid_hook
from tools.simulate.batches import TrainBatch
from tools.watch.emitters import GradNormMeter


@dataclass
class HookSums:
    """Per SAE hook: summed feature activations and token count (pass 1), summed residual gradient (pass 2)."""

    sae: Any
    acts: torch.Tensor | None = None  # [d_sae] float64
    tokens: int = 0
    resid_grad: torch.Tensor | None = None  # [d_model] float64

    def base_acts_mean(self) -> torch.Tensor:
        return self.acts / max(self.tokens, 1)  # type: ignore[operator]


@dataclass
class BatchGrads:
    """One batch's pass-2 reading, on the host."""

    index: int  # 1-based batch number
    rows: list[int]
    loss: float
    target_tokens: int
    max_grad: float | None
    modules: dict[str, float]


@dataclass
class Sweep:
    batches: int = 0
    tokens: int = 0
    skipped: list[list[int]] = field(default_factory=list)  # batches with no target token (all prompt after truncation)
    truncated: int = 0
    loss_sum: float = 0.0
    grads: list[BatchGrads] = field(default_factory=list)
    grad_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name → Σ batch gradients, float32
    hooks: dict[str, HookSums] = field(default_factory=dict)

    def mean_grads(self) -> dict[str, torch.Tensor]:
        n = max(len(self.grads), 1)
        return {k: v / n for k, v in self.grad_sums.items()}


def sweep(
    model: nn.Module,
    n_layers: int,
    batches: Iterable[TrainBatch],
    saes: dict[str, Any],
    *,
    acts: bool,
    grads: bool,
    device: str,
    on_batch: Callable[[int, BatchGrads | None], None] | None = None,
) -> Sweep:
    """Run every batch (see the module doc). `acts`: pass 1; `grads`: pass 2. `on_batch(position, reading)` is
    called after each batch of the dataset, in order, skipped and other ranks' batches too (`position` counts
    them all, 1-based, so progress is monotone), with this rank's pass-2 reading of it or None."""
    out = Sweep(hooks={hook: HookSums(sae) for hook, sae in saes.items()})
    captured: dict[str, torch.Tensor] = {}
    handles = [resid_hook(model, n_layers, hook, captured, detach=False) for hook in saes]
    meter = GradNormMeter(model) if grads else None
    names = {id(p): n for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    try:
        for position, batch in enumerate(batches, 1):
            out.truncated += batch.truncated
            reading = None
            if batch.target_tokens == 0:
                out.skipped.append(batch.rows)
            else:
                out.batches += 1  # the batch's one-process number, 1-based
                if distributed.mine(out.batches - 1):
                    reading = _run(model, batch.to(device), out, captured, meter, names, acts=acts, grads=grads)
            if on_batch is not None:
                on_batch(position, reading)
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.grad = None
        model.train(was_training)
    if distributed.world()[1] > 1:
        _combine(out, model)
    return out


def _run(
    model: nn.Module,
    batch: TrainBatch,
    out: Sweep,
    captured: dict[str, torch.Tensor],
    meter: GradNormMeter | None,
    names: dict[int, str],
    *,
    acts: bool,
    grads: bool,
) -> BatchGrads | None:
    """One batch's forward (and backward), added into `out`; numbered out.batches."""
    with torch.set_grad_enabled(grads):
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    keep = _sae_tokens(batch.attention_mask)
    out.tokens += int(batch.attention_mask.sum())
    if acts:
        _add_acts(out.hooks, captured, keep)
    reading = None
    if grads:
        for hook, sums in out.hooks.items():
            captured[hook].register_hook(_resid_grad(sums, batch.attention_mask))
        loss.backward()
        reading = _read_grads(meter, loss, batch, out.batches)  # type: ignore[arg-type]
        _accumulate(model, names, out.grad_sums)
        out.grads.append(reading)
        out.loss_sum += reading.loss
    else:
        out.loss_sum += float(loss)
    captured.clear()
    return reading


def _combine(out: Sweep, model: nn.Module) -> None:
    """Every rank's sums added and readings gathered into `out`, which becomes the one-process Sweep on every
    rank. The batch count and the skipped and truncated batches are already equal everywhere (each rank reads
    every batch), so they are not reduced."""
    named = {f"grad.{k}": v for k, v in out.grad_sums.items()}
    for hook, sums in out.hooks.items():
        if sums.acts is not None:
            named[f"acts.{hook}"] = sums.acts
        if sums.resid_grad is not None:
            named[f"resid.{hook}"] = sums.resid_grad
    summed = distributed.all_sum_named(named)
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    grads = sorted((k.removeprefix("grad.") for k in summed if k.startswith("grad.")), key=order.__getitem__)
    out.grad_sums = {n: summed[f"grad.{n}"] for n in grads}  # model order, as one process adds them
    hooks = list(out.hooks.items())
    totals = distributed.all_sums([out.loss_sum, out.tokens, *(s.tokens for _, s in hooks)])
    out.loss_sum, out.tokens = totals[0], round(totals[1])
    for (hook, sums), tokens in zip(hooks, totals[2:], strict=True):
        sums.tokens = round(tokens)
        sums.acts = summed.get(f"acts.{hook}")
        sums.resid_grad = summed.get(f"resid.{hook}")
    out.grads = sorted(distributed.gather(out.grads), key=lambda b: b.index)
    if out.grads:
        out.loss_sum = sum(b.loss for b in out.grads)  # in batch order: one process's float sum exactly


def _sae_tokens(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens except each sequence's first."""
    keep = mask.bool().clone()
    first = mask.long().argmax(dim=1)
    keep[torch.arange(mask.shape[0], device=mask.device), first] = False
    return keep


@torch.no_grad()
def _add_acts(hooks: dict[str, HookSums], captured: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
    for hook, sums in hooks.items():
        h = captured[hook].detach()[keep].float()
        feats = sums.sae.encode(h).double().sum(0)
        sums.acts = feats if sums.acts is None else sums.acts + feats
        sums.tokens += h.shape[0]


def _resid_grad(sums: HookSums, mask: torch.Tensor) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        g = (grad.double() * mask.unsqueeze(-1)).sum(dim=(0, 1))  # padding has no gradient; the mask makes sure
        sums.resid_grad = g if sums.resid_grad is None else sums.resid_grad + g

    return hook


def _read_grads(meter: GradNormMeter, loss: torch.Tensor, batch: TrainBatch, index: int) -> BatchGrads:
    norms, riders = meter.to_host(meter.on_device(loss))
    return BatchGrads(
        index=index,
        rows=batch.rows,
        loss=riders[0],
        target_tokens=batch.target_tokens,
        max_grad=norms.max,
        modules=norms.modules,
    )


@torch.no_grad()
def _accumulate(model: nn.Module, names: dict[int, str], sums: dict[str, torch.Tensor]) -> None:
    for p in model.parameters():
        if p.grad is None:
            continue
        name = names[id(p)]
        g = p.grad.float()  # the batch's own buffer when already float32: kept as the sum, not copied
        if name in sums:
            sums[name].add_(g)
        else:
            sums[name] = g
        p.grad = None
