"""run_merge_analysis's run: the weight checks from one pass over the adapter (weight-diff's), then the model
checks on the probes; the verdict is the worst check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from session.checkpoint_keys import INPUT_EMBEDDINGS, OUTPUT_EMBEDDINGS
from session.checkpoints import CheckpointReader, align, open_checkpoint
from session.context import ToolContext
from session.models import load_owned, load_pair
from session.probes import ProbeSet, ProbeSummary, read_probes
from session.run_info import RunInfo
from tools.merge_analysis import checks
from tools.merge_analysis.models import MergeInput, MergeResult
from tools.merge_analysis.outputs import Runs, full_runs, lora_runs
from tools.merge_analysis.report import findings, follow_ups
from tools.weight_diff import compute
from tools.weight_diff.layout import place
from tools.weight_diff.models import NonFiniteTensor
from toolserver.contract import Outcome, Reporter, ToolError


def run(ctx: ToolContext, args: MergeInput, reporter: Reporter) -> Outcome[MergeResult]:
    session = ctx.require_session()
    base_dir = ctx.base_dir()
    probes = read_probes(args.prompts)
    reporter.progress(0.0, "reading the adapter and the base weights it touches")
    with open_checkpoint(base_dir) as base, open_checkpoint(args.checkpoint) as ckpt:
        tie_problems = broken_ties(base, ckpt)
        aligned = align(base, ckpt, lenient=True)
        vocab = [m for m in aligned.mismatched if _is_embedding(m.split(" ")[0], base)]
        other = [m for m in aligned.mismatched if m not in vocab]
        if other:
            raise ToolError(
                f"{ckpt.path} does not fit the base {base_dir}: {len(other)} shape mismatches outside the "
                f"embeddings, e.g. {'; '.join(other[:3])}",
                "is the checkpoint from another architecture or size?",
            )
        collected = compute.collect(base, ckpt, aligned, _Scaled(reporter, 0.0, 0.3))
        mode, save_dtype = ckpt.kind, _save_dtype(base)
        missing = list(aligned.missing_targets)
    matrices = checks.adapted_matrices(collected.measured, mode)
    rank, big = checks.rank(matrices, args)
    collapse, collapsed = checks.collapse(matrices, args)
    factor_bad = [t for t in collected.nonfinite if t.checkpoint or t.note]
    reason = _no_model_run(factor_bad, vocab, missing)
    runs, runtime = Runs(None, None, [], 0), None
    if reason is None:
        reporter.progress(0.35, "running the probes: base, adapter unmerged, merged as saved")
        runs, runtime, reason = _model_runs(ctx, args, mode, probes, save_dtype)
    behaviour_reason = (
        "encoder: no generation (weight checks and fidelity only)"
        if session.kind == "embedding"
        else "--no-behavioral"
        if args.no_behavioral
        else reason
    )
    all_checks = [
        checks.no_op(mode, collected.measured, missing, collected.compared + len(collected.nonfinite)),
        checks.non_finite(
            collected.nonfinite,
            runs.merged_nonfinite if runs.fidelity is not None else None,
            str(save_dtype).removeprefix("torch."),
        ),
        rank,
        collapse,
        checks.vocab_tying(vocab, tie_problems),
        checks.fidelity(runs.fidelity, reason if mode == "lora" else "a full checkpoint has no unmerged form", args),
        checks.degenerate(runs.behaviour, behaviour_reason, args),
        checks.next_token_kl(runs.behaviour, behaviour_reason, args),
    ]
    path = Path(args.checkpoint)
    flagged = {f.key + f.label: f for f in [*big, *collapsed]}
    result = MergeResult(
        name=args.name or (path.name if path.is_dir() else path.stem),
        checkpoint=str(path.expanduser().resolve()),
        base=str(base_dir),
        kind=session.kind,
        mode=mode,
        verdict=checks.verdict(all_checks),
        checks=all_checks,
        flagged=list(flagged.values()),
        adapted=len(matrices) if mode == "full" else len({m.key for m in matrices}) + len(missing),
        fidelity=runs.fidelity,
        behaviour=runs.behaviour,
        probes=ProbeSummary(
            source=probes.source, count=len(probes.probes), max_length=args.max_length, truncated=runs.truncated
        )
        if runtime is not None
        else None,
        runtime=runtime,
    )
    reporter.progress(1.0, f"verdict {result.verdict}")
    return Outcome(result, findings(result), follow_ups(result))


def _model_runs(
    ctx: ToolContext, args: MergeInput, mode: str, probes: ProbeSet, save_dtype: torch.dtype
) -> tuple[Runs, RunInfo | None, str | None]:
    """The probe runs, how they were run, and why they could not be when peft refuses the adapter."""
    session = ctx.require_session()
    texts, prompts = probes.texts, [p.prompt for p in probes.probes]
    if mode == "lora":
        try:
            owned = load_owned(session, args.checkpoint, adapter="peft")
        except ToolError as e:
            return Runs(None, None, [], 0), None, e.message
        runtime = owned.info()
        return lora_runs(owned, texts, prompts, save_dtype, args), runtime, None
    if session.kind != "llm" or args.no_behavioral:
        return Runs(None, None, [], 0), None, None
    pair = load_pair(session, args.checkpoint, ctx.models)
    return full_runs(pair.base, pair.tuned, texts, prompts, args), pair.base.info(), None


def broken_ties(base: CheckpointReader, ckpt: CheckpointReader) -> list[str]:
    """On a base with tied embeddings (HF's default), what a merge would untie: a LoRA on the input or output
    embedding (merged into the one shared matrix, it changes both), an adapter's own copy of the head
    (modules_to_save), or a full checkpoint whose head differs from its input embedding."""
    if base.config is not None and not base.config.get("tie_word_embeddings", True):
        return []
    inputs = [k for k in INPUT_EMBEDDINGS if k in base.keys()]
    if not inputs:
        return []
    problems = [
        f"{k}: a LoRA on an embedding tied to the head; merged, it changes both"
        for k in ckpt.lora_pairs()
        if k in INPUT_EMBEDDINGS or k in OUTPUT_EMBEDDINGS
    ]
    for out in (k for k in OUTPUT_EMBEDDINGS if k in ckpt.keys()):
        if ckpt.kind == "lora":
            problems.append(f"{out}: the adapter saves its own head on a model whose head is the input embedding")
            continue
        source = ckpt if inputs[0] in ckpt.keys() else base
        own, head = source.get(inputs[0]), ckpt.get(out)
        if own.shape != head.shape or not torch.equal(own, head.to(own.dtype)):
            problems.append(f"{out} differs from {inputs[0]}: saved with tied embeddings, one of them is lost")
    return problems


def _no_model_run(factor_bad: list[NonFiniteTensor], vocab: list[str], missing: list[str]) -> str | None:
    """Why the probes cannot be run (the weight checks already fail), or None."""
    if factor_bad:
        return "NaN or inf in the adapter: every output would be NaN"
    if vocab:
        return "the vocabulary does not fit the base: the adapter cannot be applied"
    if missing:
        return "LoRA targets the base lacks: peft would leave them out, so no model run is this adapter"
    return None


def _is_embedding(key: str, base: CheckpointReader) -> bool:
    return key in base.keys() and place(key, base.shape(key)).section == "embedding" or key in OUTPUT_EMBEDDINGS


def _save_dtype(base: CheckpointReader) -> torch.dtype:
    """The dtype a merged model is saved in: the base's floating dtype (merge_and_unload keeps it)."""
    for k in base.keys():
        t = base.mapped(k)
        if t.is_floating_point():
            return t.dtype
    return torch.float32


class _Scaled:
    """A reporter for one stage: its 0..1 progress mapped into [start, end] of the whole call."""

    def __init__(self, inner: Reporter, start: float, end: float) -> None:
        self.inner, self.start, self.end = inner, start, end

    def progress(self, fraction: float, message: str = "") -> None:
        self.inner.progress(self.start + (self.end - self.start) * fraction, message)

    def emit(self, type: str, data: dict[str, Any], text: str | None = None) -> None:
        self.inner.emit(type, data, text)
