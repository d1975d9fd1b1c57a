"""Sharpness, pass 2b (influence) and pass 3 (the linearised delta and its checkpoint) at the base weights.

All three take the curvature of the same rows (hessian.Curvature). Sharpness runs whenever 2b or 3 does:
LiSSA's scale needs the measured spectrum, and pass 3's reliability is read against it.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from session import distributed
from session.context import ToolContext
from session.models import LoadedModel
from tools.simulate.batches import TrainBatch, batches
from tools.simulate.dataset import Dataset, Row, read_dataset
from tools.simulate.delta import deltas
from tools.simulate.hessian import Curvature, curvature, loss_gradient, select
from tools.simulate.influence import SEED_DAMPING, held_out, inverse_hvp, report, row_scores
from tools.simulate.models import (
    SIM_EVENTS,
    DeltaReport,
    SaeDiffSummary,
    SimulateInput,
    SimulationResult,
    SyntheticCheckpoint,
)
from tools.simulate.sharpness import sharpness
from tools.simulate.synthetic import merged_state, publish, reload_and_check, save
from toolserver.contract import Reporter, SilentReporter, ToolError

SAE_DIFF_ROWS = 256  # dataset texts sae diff runs the synthetic checkpoint on


def second_order(
    model: LoadedModel,
    dataset: Dataset,
    args: SimulateInput,
    passes: list[str],
    result: SimulationResult,
    timeline: Any,
    reporter: Reporter,
    max_len: int,
    tensors: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Returns the tensors saved with the result: delta.<parameter> (pass 3)."""
    hf = model.model
    train, test, test_source = dataset.rows, [], ""
    if "2b" in passes:
        if args.test is not None:
            test = read_dataset(args.test).rows
            test_source = f"--test {Path(args.test).expanduser().resolve()}"
        else:
            train, test = held_out(dataset.rows, args.holdout)
            test_source = (
                f"held out from the dataset: the {len(test)} row{'s' if len(test) > 1 else ''} whose content hash "
                f"falls below {args.holdout:g} (not scored)"
            )
    curv_batches = _batches(model, dataset, train[: args.hessian_rows], args, max_len)
    names = select(hf, args.influence_params)
    curv = curvature(hf, names, curv_batches)
    if "2b" in passes and args.sharpness is False:
        raise ToolError("pass 2b's LiSSA needs the measured spectrum", "drop --no-sharpness, or leave pass 2b out")
    out: dict[str, Tensor] = {}
    if args.sharpness or "2b" in passes:
        _sharpness(args, passes, result, timeline, reporter, curv)
    if "2b" in passes:
        timeline.run("2b", _influence, model, dataset, args, result, reporter, max_len, curv, train, test, test_source)
    if "3" in passes:
        out.update(timeline.run("3", _delta, model, args, result, reporter, curv, curv_batches, tensors))
    return out


def _sharpness(
    args: SimulateInput, passes: list[str], result: SimulationResult, timeline: Any, reporter: Reporter, curv: Curvature
) -> None:
    reporter.progress(0.56, f"sharpness: Lanczos on HVPs over {curv.size:,} parameters")
    sharp = timeline.run(
        "sharpness",
        sharpness,
        curv,
        args.lr,
        tol=args.sharpness_tol,
        budget=args.sharpness_budget,
        bottom="2b" in passes,
    )
    result.sharpness = sharp
    reporter.emit(
        SIM_EVENTS.type("sharpness"),
        {"run": result.name, "sharpness": sharp.model_dump(mode="json")},
        text=f"sharpness: λ_max {sharp.lambda_max:.4g} (2/η = {sharp.stability_limit:.4g})"
        + (f", λ_min {sharp.lambda_min:.4g}" if sharp.lambda_min is not None else "")
        + f", {sharp.iterations} HVPs",
    )


def _batches(
    model: LoadedModel, dataset: Dataset, rows: list[Row], args: SimulateInput, max_len: int
) -> list[TrainBatch]:
    pairs = [(r.prompt, r.chosen if dataset.format == "preference" else r.response) for r in rows]
    return [
        b.to(model.device) for b in batches(model.tokenizer, pairs, [r.index for r in rows], args.batch_size, max_len)
    ]


def _influence(
    model: LoadedModel,
    dataset: Dataset,
    args: SimulateInput,
    result: SimulationResult,
    reporter: Reporter,
    max_len: int,
    curv: Curvature,
    train: list[Row],
    test: list[Row],
    test_source: str,
) -> None:
    hf = model.model
    test_batches = _batches(model, dataset, test, args, max_len)
    g_test, test_loss = loss_gradient(hf, curv.names, test_batches)
    g_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in g_test))
    if g_norm == 0:
        raise ToolError(
            f"the test loss has no gradient over the influence parameters ({test_source})",
            "check that the test rows have responses, or widen --influence-params",
        )
    reporter.progress(0.62, "pass 2b: LiSSA inverse-HVP")
    sharp = result.sharpness
    assert sharp is not None and sharp.lambda_min is not None
    if not sharp.converged and args.lissa_scale is None:
        raise ToolError(
            f"Lanczos did not converge within {sharp.budget} HVPs (λ_max ≥ {sharp.lambda_max:.4g}, λ_min ≤ "
            f"{sharp.lambda_min:.4g} are bounds only): LiSSA's scale needs the measured spectrum",
            "raise --sharpness-budget or --sharpness-tol, or give --lissa-scale",
        )
    res, summary = inverse_hvp(
        curv,
        g_test,
        sharp.lambda_max,
        sharp.lambda_min,
        damping=args.damping,
        scale=args.lissa_scale,
        tol=args.lissa_tol,
        budget=args.lissa_depth,
    )
    reporter.emit(
        SIM_EVENTS.type("lissa"),
        {"run": result.name, "lissa": summary.model_dump(mode="json")},
        text=f"pass 2b: LiSSA converged in {summary.iterations} HVPs (residual {summary.residual:.2e}, "
        f"s {summary.scale:.4g}, λ {summary.damping:.4g})",
    )
    train_batches = _batches(model, dataset, train, args, max_len)
    n = len(train_batches)
    scores = row_scores(
        hf,
        curv.names,
        res.ihvp,
        train_batches,
        on_batch=lambda i: reporter.progress(0.7 + 0.12 * i / n, f"pass 2b: per-sample gradients, batch {i}/{n}"),
    )
    result.influence = report(
        train,
        scores,
        curv=curv,
        pattern=args.influence_params,
        test_source=test_source,
        test_rows=len(test),
        test_loss=test_loss,
        g_test_norm=g_norm,
        lissa_summary=summary,
        top=args.influence_top,
    )


def _delta(
    model: LoadedModel,
    args: SimulateInput,
    result: SimulationResult,
    reporter: Reporter,
    curv: Curvature,
    curv_batches: list[TrainBatch],
    tensors: dict[str, Tensor],
) -> dict[str, Tensor]:
    hf = model.model
    names = [n for n, _ in hf.named_parameters()]
    full = curv if curv.names == names else curvature(hf, names, curv_batches)
    grads = [
        tensors.get(f"mean_grad.{n}", torch.zeros_like(p)).to(p.device) for n, p in zip(names, full.params, strict=True)
    ]
    reporter.progress(0.85, "pass 3: one HVP along the mean gradient")
    hg = full.hvp(grads)
    damping = args.damping if args.damping is not None else SEED_DAMPING
    steps = result.config.steps
    rows, written = deltas(
        names,
        full.params,
        grads,
        hg,
        lr=args.lr,
        steps=steps,
        damping=damping,
        grad_clip=args.grad_clip,
        rule=args.delta_rule,
    )
    result.delta = DeltaReport(
        rule=args.delta_rule,
        lr=args.lr,
        steps=steps,
        damping=damping,
        clip_limit=args.lr * steps * args.grad_clip,
        hessian_rows=full.rows,
        clipped=[r.name for r in rows if r.clipped],
        tensors=rows,
    )
    return {f"delta.{n}": d for n, d in written.items()}


def checkpoint_pass(
    ctx: ToolContext,
    model: LoadedModel,
    dataset: Dataset,
    args: SimulateInput,
    result: SimulationResult,
    tensors: dict[str, Tensor],
    reporter: Reporter,
    max_len: int,
) -> None:
    """Write the synthetic checkpoint (rank 0), reload and check it, and run sae diff on it."""
    assert result.delta is not None and args.out is not None
    delta = {k.removeprefix("delta."): v for k, v in tensors.items() if k.startswith("delta.")}
    limit = result.delta.clip_limit * (1 + 1e-5)
    over = [n for n, d in delta.items() if float(d.double().norm()) > limit]
    if over:
        raise ToolError(f"pass 3's delta for {over[0]} exceeds the clip limit {result.delta.clip_limit:.4g}", "a bug")
    if not distributed.is_writer():
        return
    hf = model.model
    state = merged_state(hf, delta)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    reporter.progress(0.97, "pass 3: writing and reloading the synthetic checkpoint")
    written = save(hf, model.tokenizer, state, out, args.checkpoint_format, result.config.steps)
    try:
        matched = reload_and_check(ctx, written, state)
    except ToolError:
        shutil.rmtree(written.parent, ignore_errors=True)
        raise
    path = publish(written, out)
    ckpt = SyntheticCheckpoint(
        path=str(path.resolve()),
        format=args.checkpoint_format,
        tensors=len(state),
        reloaded=True,
        matched=matched,
    )
    session = ctx.require_session()
    if session.saes:
        ckpt.sae_diff, ckpt.sae_diff_texts = _sae_diff(ctx, dataset, path, args, max_len)
    result.delta.checkpoint = ckpt
    changed = ", ".join(f"{d.hook}: {d.changed} changed, mean |Δ| {d.mean_abs_delta:.3g}" for d in ckpt.sae_diff)
    reporter.emit(
        SIM_EVENTS.type("checkpoint"),
        {"run": result.name, "checkpoint": ckpt.model_dump(mode="json")},
        text=f"pass 3: synthetic checkpoint {path} ({matched} tensors reloaded equal)"
        + (f"; sae diff {changed}" if changed else ""),
    )


def _sae_diff(
    ctx: ToolContext, dataset: Dataset, path: Path, args: SimulateInput, max_len: int
) -> tuple[list[SaeDiffSummary], int]:
    from tools.sae.models import SaeDiffInput
    from tools.sae.run_diff import run as sae_diff

    texts = [f"{r.prompt} {r.answer}".strip() for r in dataset.rows[:SAE_DIFF_ROWS]]
    with tempfile.TemporaryDirectory() as tmp:
        probes = Path(tmp) / "texts.json"
        probes.write_text(json.dumps(texts))
        diff = sae_diff(
            ctx,
            SaeDiffInput(checkpoint=str(path), prompts=str(probes), batch_size=args.batch_size, max_length=max_len),
            SilentReporter(),
        ).result
    summaries = [
        SaeDiffSummary(hook=x.hook, features=x.d_sae, changed=x.n_changed, mean_abs_delta=x.mean_abs_delta)
        for x in diff.layers
    ]
    return summaries, len(texts)
