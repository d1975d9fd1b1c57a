"""Running probes through a loaded model and reading activations at TransformerLens hook names, batch by batch.

Probes are tokenised by the base's tokenizer in batches with padding and an attention mask; each batch is run,
its activations at the asked hooks are reduced, and only the reduced tensors leave the loop, so activation
memory is one batch's whatever the number of probes. Reductions:

- "last":   the last real token of each probe (right or left padding alike);
- "mean":   the mean over each probe's real tokens;
- "tokens": every real token, as rows (with the count per probe).

`skip_first` drops each probe's first real token from "mean" and "tokens" (its outlier norm dominates
SAE error). Hook names are TransformerLens': through the bridge any hook it has (`blocks.{L}.hook_resid_post`,
`blocks.{L}.hook_mlp_out`, `blocks.0.hook_resid_pre`, …); through transformers (encoders, adapters applied
unmerged) `blocks.{L}.hook_resid_pre` and `blocks.{L}.hook_resid_post`, read as the input and output of the
model's layer L (for an encoder, its hidden_states[L] and [L+1]).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from session.models import LoadedModel, ModelPair
from toolserver.contract import ToolError

Reduce = Literal["last", "mean", "tokens"]
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HF_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass
class TokenBatch:
    index: list[int]  # positions of these probes in the probe list
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq], 1 for real tokens
    lengths: list[int]  # each probe's token count before truncation

    @property
    def truncated(self) -> int:
        """Probes of this batch cut to the batch's width."""
        return sum(n > self.input_ids.shape[1] for n in self.lengths)

    def to(self, device: str) -> TokenBatch:
        return TokenBatch(self.index, self.input_ids.to(device), self.attention_mask.to(device), self.lengths)


def token_batches(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
    padding_side: Literal["right", "left"] = "right",
    prepend_bos: bool = False,
) -> Iterator[TokenBatch]:
    """Tokenise in batches with the model's own tokenizer, each batch padded to its longest probe; a probe longer
    than max_length keeps its first max_length tokens (and counts in `truncated`). prepend_bos puts the BOS token
    first where the tokenizer does not (an SAE trained with prepend_bos, as sae-lens records it)."""
    if batch_size < 1 or max_length < 1:
        raise ValueError("batch_size and max_length must be positive")
    pad = tokenizer.pad_token_id
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = tokenizer(chunk, add_special_tokens=True)["input_ids"]
        bos = tokenizer.bos_token_id
        if prepend_bos and bos is not None:
            encoded = [ids if ids[:1] == [bos] else [bos, *ids] for ids in encoded]
        rows = [ids[:max_length] or [pad] for ids in encoded]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
        yield TokenBatch(list(range(start, start + len(rows))), ids, mask, [len(e) for e in encoded])


@dataclass
class BatchActivations:
    batch: TokenBatch
    acts: dict[str, torch.Tensor]  # hook -> [batch, d] ("last", "mean") or [rows, d] ("tokens")
    counts: torch.Tensor  # tokens reduced per probe, [batch]


def hook_names(model: LoadedModel) -> set[str]:
    """Every hook name this model can be read at."""
    if model.backend == "transformers":
        return {f"blocks.{layer}.hook_resid_{w}" for layer in range(model.n_layers) for w in ("pre", "post")}
    from transformer_lens.model_bridge.bridge import build_alias_to_canonical_map

    hooks = model.model.hook_dict
    return set(hooks) | set(build_alias_to_canonical_map(hooks))


def check_hooks(model: LoadedModel, hooks: Sequence[str]) -> None:
    """One line naming the first hook this model does not have (a layer out of range, a misspelt name)."""
    known = hook_names(model)
    for hook in hooks:
        if hook in known:
            continue
        m = _BLOCK.match(hook)
        if m and int(m.group(1)) >= model.n_layers:
            raise ToolError(
                f"hook {hook} names layer {m.group(1)}, but the model has {model.n_layers} layers "
                f"(0–{model.n_layers - 1})",
                "pick a layer in range",
            )
        examples = ", ".join(sorted(h for h in known if h.startswith("blocks.0."))[:6])
        raise ToolError(f"the {model.kind} model ({model.backend}) has no hook {hook!r}", f"hooks look like {examples}")


def run_probes(
    model: LoadedModel, batches: Iterable[TokenBatch], hooks: Sequence[str], reduce: Reduce, *, skip_first: bool = False
) -> Iterator[BatchActivations]:
    """Yield each batch's reduced activations at `hooks` (float32, on the model's device). The hooks are attached
    once for the whole stream (attaching them per batch costs TransformerLens ~35 ms a call) and removed when the
    stream ends or is closed."""
    check_hooks(model, hooks)
    captured: dict[str, torch.Tensor] = {}
    attach = _bridge_hooks if model.backend == "bridge" else _hf_hooks
    with attach(model, hooks, captured) as forward:
        for batch in batches:
            batch = batch.to(model.device)
            with torch.no_grad():
                forward(batch)
            keep = real_tokens(batch.attention_mask, skip_first)
            acts = {h: reduce_tokens(captured.pop(h).float(), keep, reduce) for h in hooks}
            yield BatchActivations(batch, acts, keep.sum(1))


def run_pair(
    pair: ModelPair, batches: Iterable[TokenBatch], hooks: Sequence[str], reduce: Reduce, *, skip_first: bool = False
) -> Iterator[tuple[BatchActivations, BatchActivations]]:
    """Base and checkpoint on the same batches in lockstep: (base, tuned) per batch, one batch in memory at a time."""
    base_batches, tuned_batches = itertools.tee(batches)
    yield from zip(
        run_probes(pair.base, base_batches, hooks, reduce, skip_first=skip_first),
        run_probes(pair.tuned, tuned_batches, hooks, reduce, skip_first=skip_first),
        strict=True,
    )


def real_tokens(mask: torch.Tensor, skip_first: bool) -> torch.Tensor:
    """The positions a reduction uses: real tokens, without each probe's first one when skip_first."""
    keep = mask.bool()
    if skip_first:
        keep = keep.clone()
        first = keep.int().argmax(-1)  # the first real token, wherever the padding is
        keep[torch.arange(keep.shape[0], device=keep.device), first] = False
    return keep


def reduce_tokens(acts: torch.Tensor, keep: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """[batch, seq, d] → "last" [batch, d], "mean" [batch, d] (0 where nothing is kept), "tokens" [rows, d]."""
    if reduce == "tokens":
        return acts[keep]
    if reduce == "mean":
        weights = keep.to(acts.dtype).unsqueeze(-1)
        return (acts * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    positions = torch.arange(keep.shape[1], device=keep.device)
    last = torch.where(keep, positions, -1).argmax(-1)
    return acts[torch.arange(acts.shape[0], device=acts.device), last]


@contextmanager
def _bridge_hooks(model: LoadedModel, hooks: Sequence[str], captured: dict[str, torch.Tensor]) -> Iterator[Any]:
    layers = [int(m.group(1)) for h in hooks if (m := _BLOCK.match(h))]
    # stop after the deepest hooked block when every hook is inside one: later blocks and the unembedding never run
    stop = max(layers) + 1 if len(layers) == len(hooks) and max(layers) + 1 < model.n_layers else None

    def grab(name: str) -> Any:
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            captured[name] = tensor.detach()

        return hook

    def forward(batch: TokenBatch) -> None:
        model.model(batch.input_ids, attention_mask=batch.attention_mask, return_type=None, stop_at_layer=stop)

    with model.model.hooks(fwd_hooks=[(h, grab(h)) for h in hooks]):
        yield forward


def decoder_layers(module: nn.Module, n_layers: int) -> nn.ModuleList:
    """The transformers module's list of its n_layers layers (transformer.h, model.layers, encoder.layer, …)."""
    for name, child in module.named_modules():
        if (
            isinstance(child, nn.ModuleList)
            and len(child) == n_layers
            and name.rsplit(".", 1)[-1] in ("h", "layers", "layer", "blocks")
        ):
            return child
    raise ToolError(
        f"cannot find the {n_layers} layers of {type(module).__name__}",
        "an unusual architecture: merge the adapter to run it through the bridge",
    )


def resid_hook(
    module: nn.Module, n_layers: int, hook: str, captured: dict[str, torch.Tensor], *, detach: bool = True
) -> Any:
    """A forward hook on a transformers module that keeps the residual stream at `hook` (blocks.L.hook_resid_pre or
    hook_resid_post: the input or the output of its layer L) in captured[hook]; detach=False keeps the tensor's
    graph, for a gradient with respect to it. Returns the handle."""
    m = _HF_HOOK.match(hook)
    if m is None:
        raise ToolError(
            f"through transformers only the residual stream can be read (blocks.L.hook_resid_pre or hook_resid_post), "
            f"not {hook}",
            "use an SAE trained on a resid_pre or resid_post hook",
        )
    layer, where = int(m.group(1)), m.group(2)
    if layer >= n_layers:
        raise ToolError(
            f"hook {hook} names layer {layer}, but the model has {n_layers} layers", "pick a layer in range"
        )
    block = decoder_layers(module, n_layers)[layer]

    def keep(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if detach else t

    if where == "pre":

        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[hook] = keep(args[0] if args else kwargs["hidden_states"])

        return block.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod: nn.Module, args: Any, output: Any) -> None:
        captured[hook] = keep(output[0] if isinstance(output, tuple) else output)

    return block.register_forward_hook(post)


@contextmanager
def _hf_hooks(model: LoadedModel, hooks: Sequence[str], captured: dict[str, torch.Tensor]) -> Iterator[Any]:
    handles = [resid_hook(model.hf, model.n_layers, hook, captured) for hook in hooks]

    def forward(batch: TokenBatch) -> None:
        positions = {"position_ids": position_ids(batch.attention_mask)} if model.kind == "llm" else {}
        model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **positions)

    try:
        yield forward
    finally:
        for h in handles:
            h.remove()


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding shifts them otherwise); pads get 0."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)
