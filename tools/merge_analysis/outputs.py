"""The gate's model runs: fidelity (unmerged vs saved merge) and behaviour (base vs merged), on the probes.

A LoRA adapter is loaded once, applied unmerged by peft on the float32 base: the base's outputs come from
the same model with the adapter disabled, the reference from it enabled. The base weights are then cast
to the dtype the merge is saved in (the base's: bf16 stays bf16) and peft's own `merge_and_unload` merges
into them, exactly as a user's merge-and-save would; that model, upcast to float32 to run, is the merged
one. A full checkpoint has no unmerged form: only its behaviour against the base is measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from session.activations import TokenBatch, real_tokens, reduce_tokens, token_batches
from session.checkpoint_keys import normalise_key
from session.generation import Generation, greedy, logits
from session.models import LoadedModel
from tools.merge_analysis.models import NGRAM, Behaviour, Fidelity, GenerationPair, MergeInput

Outputs = Callable[[TokenBatch], torch.Tensor]  # a batch -> [positions, dims] float64


@dataclass
class Runs:
    fidelity: Fidelity | None
    behaviour: Behaviour | None
    merged_nonfinite: list[str]
    truncated: int


def outputs_of(model: LoadedModel) -> Outputs:
    """LLM: the logits at every real token; encoder: the hidden state mean-pooled over real tokens."""

    def run(batch: TokenBatch) -> torch.Tensor:
        ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
        if model.kind == "llm":
            return logits(model, ids, mask)[mask.bool()].double().cpu()
        with torch.no_grad():
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return reduce_tokens(hidden, real_tokens(mask, skip_first=False), "mean").double().cpu()

    return run


def lora_runs(
    owned: LoadedModel, texts: Sequence[str], prompts: Sequence[str], save_dtype: torch.dtype, args: MergeInput
) -> Runs:
    """`owned` is the peft-wrapped float32 model (load_owned, adapter 'peft'); it is merged in place."""
    peft_model = owned.model
    batches = _batches(owned, texts, args)
    behavioural = owned.kind == "llm" and not args.no_behavioral
    with peft_model.disable_adapter():
        base = [outputs_of(owned)(b) for b in batches]
        base_gens = _generate(owned, prompts, args) if behavioural else []
    unmerged = [outputs_of(owned)(b) for b in batches]
    merged_model, bad = merge_saved(peft_model, save_dtype)
    merged = replace(owned, model=merged_model, adapter="merged")
    merged_out = [outputs_of(merged)(b) for b in batches]
    fid = fidelity(base, unmerged, merged_out, "logits" if owned.kind == "llm" else "pooled hidden", str(save_dtype))
    behaviour = (
        behaviour_of(base, merged_out, base_gens, _generate(merged, prompts, args), args) if behavioural else None
    )
    return Runs(fid, behaviour, bad, sum(b.truncated for b in batches))


def full_runs(
    base: LoadedModel, tuned: LoadedModel, texts: Sequence[str], prompts: Sequence[str], args: MergeInput
) -> Runs:
    """A full checkpoint: behaviour only (there is nothing to merge, so nothing to be faithful to)."""
    if base.kind != "llm" or args.no_behavioral:
        return Runs(None, None, [], 0)
    batches = _batches(base, texts, args)
    base_out = [outputs_of(base)(b) for b in batches]
    tuned_out = [outputs_of(tuned)(b) for b in batches]
    b = behaviour_of(base_out, tuned_out, _generate(base, prompts, args), _generate(tuned, prompts, args), args)
    return Runs(None, b, [], sum(x.truncated for x in batches))


def merge_saved(peft_model: torch.nn.Module, save_dtype: torch.dtype) -> tuple[torch.nn.Module, list[str]]:
    """peft's merge into base weights held in save_dtype (the adapter's own weights stay as peft keeps them);
    returns the merged model upcast to float32 and the merged tensors holding NaN/inf in save_dtype."""
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" not in name:
                p.data = p.data.to(save_dtype)
        merged = peft_model.merge_and_unload()
        bad = [
            normalise_key(n)
            for n, p in merged.named_parameters()
            if p.is_floating_point() and not bool(torch.isfinite(p).all())
        ]
    return merged.float().eval(), bad


def fidelity(
    base: list[torch.Tensor], unmerged: list[torch.Tensor], merged: list[torch.Tensor], output: str, save_dtype: str
) -> Fidelity:
    ref, b, m = torch.cat(unmerged), torch.cat(base), torch.cat(merged)
    diff = (m - ref).abs()
    finite = bool(torch.isfinite(diff).all())
    scale = float(ref.var(dim=-1, unbiased=False).mean().sqrt()) if ref.shape[-1] > 1 else float(ref.abs().mean())
    effect = float((ref - b).abs().mean())
    max_abs = float(diff.max()) if finite else math.inf
    mean_abs = float(diff.mean()) if finite else math.inf
    return Fidelity(
        output=output,  # type: ignore[arg-type]
        save_dtype=save_dtype.removeprefix("torch."),
        max_abs=max_abs,
        mean_abs=mean_abs,
        scale=scale,
        max_rel_scale=max_abs / scale if scale > 0 else math.inf,
        effect_mean_abs=effect,
        share_of_effect=mean_abs / effect if effect > 0 else None,
        positions=ref.shape[0],
    )


def behaviour_of(
    base: list[torch.Tensor],
    merged: list[torch.Tensor],
    base_gens: list[Generation],
    merged_gens: list[Generation],
    args: MergeInput,
) -> Behaviour:
    kl = torch.cat([_kl(b, m) for b, m in zip(base, merged, strict=True)])
    pairs = []
    for g0, g1 in zip(base_gens, merged_gens, strict=True):
        rate = repeat_rate(g1.content)
        pairs.append(
            GenerationPair(
                prompt=g0.prompt,
                base=g0.text,
                merged=g1.text,
                base_degenerate=is_degenerate(g0, args.repeat_rate),
                merged_degenerate=is_degenerate(g1, args.repeat_rate),
                merged_repeat_rate=rate,
            )
        )
    n = max(1, len(pairs))
    finite = bool(torch.isfinite(kl).all())
    return Behaviour(
        max_new_tokens=args.max_new_tokens,
        base_degenerate=sum(p.base_degenerate for p in pairs) / n,
        merged_degenerate=sum(p.merged_degenerate for p in pairs) / n,
        merged_empty=sum(not g.text.strip() for g in merged_gens) / n,
        mean_repeat_rate=sum(p.merged_repeat_rate for p in pairs) / n,
        kl_mean=float(kl.mean()) if finite else math.inf,
        kl_max=float(kl.max()) if finite else math.inf,
        generations=pairs,
    )


def repeat_rate(tokens: Sequence[int], n: int = NGRAM) -> float:
    """Share of the n-grams that repeat an earlier one: 0 for fresh text, → 1 for a loop."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(g: Generation, threshold: float) -> bool:
    return not g.text.strip() or repeat_rate(g.content) >= threshold


def _kl(base: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_merged) per position, in nats (float64)."""
    lb, lm = torch.log_softmax(base, -1), torch.log_softmax(merged, -1)
    return (lb.exp() * (lb - lm)).sum(-1)


def _batches(model: LoadedModel, texts: Sequence[str], args: MergeInput) -> list[TokenBatch]:
    limit = min(args.max_length, model.n_ctx)
    return list(token_batches(model.tokenizer, texts, batch_size=args.batch_size, max_length=limit))


def _generate(model: LoadedModel, prompts: Sequence[str], args: MergeInput) -> list[Generation]:
    return greedy(model, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
