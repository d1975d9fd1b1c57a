"""run_simulation's run: pass 0 on the text, then passes 1, 2 and 2c on the session's base model at its own
weights, with no optimiser step (checksummed before the first model pass and after the last)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from session import distributed
from session.context import ToolContext
from session.models import LoadedModel, load_base
from session.sae import SaeInfo, processing_for, session_saes
from tools.sae.labels import labels_for
from tools.simulate import artifacts
from tools.simulate.batches import batches
from tools.simulate.dataset import Dataset, read_dataset
from tools.simulate.decompose import feature_shifts, predict, scores
from tools.simulate.invariant import check, checksum
from tools.simulate.landscape import BatchGrads, Sweep, sweep
from tools.simulate.models import PASSES, SIM_EVENTS, PassTiming, SimConfig, SimulateInput, SimulationResult
from tools.simulate.preference import preference_sweep
from tools.simulate.quality import quality_report
from tools.simulate.report import findings, follow_ups, landscape, preference_report, simulation_signals
from tools.simulate.second_order import checkpoint_pass, second_order
from tools.watch.engine import EngineConfig, SignalEngine
from tools.watch.snapshot import StepSnapshot
from toolserver.contract import Outcome, Reporter, ToolError


class Timeline:
    """Pass start/end events and their timings."""

    def __init__(self, reporter: Reporter, name: str) -> None:
        self.reporter, self.name, self.t0 = reporter, name, time.perf_counter()
        self.passes: list[PassTiming] = []

    def run(self, label: str, fn: Any, *a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        self.reporter.emit(SIM_EVENTS.type("pass"), {"run": self.name, "pass": label, "phase": "start"})
        out = fn(*a, **kw)
        seconds = time.perf_counter() - start
        self.passes.append(PassTiming(name=label, started_s=round(start - self.t0, 4), seconds=round(seconds, 4)))
        self.reporter.emit(
            SIM_EVENTS.type("pass"),
            {"run": self.name, "pass": label, "phase": "end", "seconds": round(seconds, 4)},
            text=f"pass {label}: {seconds:.2f} s",
        )
        return out


def _passes(args: SimulateInput, dataset: Dataset) -> tuple[list[str], list[str]]:
    asked = list(args.passes) if args.passes is not None else None
    if asked is None:
        asked = ["0", "1", "2"] + (["2c"] if dataset.format == "preference" else [])
    skipped = []
    if "3" in asked and "2" not in asked:
        asked.append("2")
        skipped.append("2 added: pass 3 moves each tensor along pass 2's mean gradient")
    chosen = [p for p in PASSES if p in asked]
    if "2c" in chosen and dataset.format != "preference":
        chosen.remove("2c")
        skipped.append("2c: the dataset holds SFT rows, not {prompt, chosen, rejected} pairs")
    if "3" in chosen and args.out is None:
        raise ToolError(
            "pass 3 writes a synthetic checkpoint, so it needs --out DIR", "add --out DIR, or leave pass 3 out"
        )
    if "2b" in chosen and args.test is None and len(dataset.rows) < 2:
        raise ToolError(
            f"pass 2b needs test rows: {dataset.path} has one row to hold out and none to train on",
            "give --test FILE",
        )
    return chosen, skipped


def _saes(ctx: ToolContext, passes: list[str], skipped: list[str]) -> list[tuple[Any, SaeInfo]]:
    session = ctx.require_session()
    wants = [p for p in passes if p in ("1", "2c")]
    if not wants:
        return []
    if not session.saes:
        if "1" in passes:
            passes.remove("1")
            skipped.append("1: the session has no SAE (load one with: trainspect load sae DIR); no feature prediction")
        return []
    saes = session_saes(session, ctx.models)
    for _, info in saes:
        processing, _ = processing_for(info)
        if not processing.raw:
            raise ToolError(
                f"the SAE at {info.hook} was trained on TransformerLens-processed weights ({processing.describe()}); "
                "simulate differentiates the model's own weights",
                "load an SAE trained on the raw Hugging Face weights",
            )
    return saes


def run(ctx: ToolContext, args: SimulateInput, reporter: Reporter) -> Outcome[SimulationResult]:
    dataset = read_dataset(args.dataset, args.format)
    session = ctx.require_session()
    if session.kind != "llm":
        raise ToolError(
            f"simulate needs a causal language model; the session's model is an {session.kind} model",
            "start a session on a causal LM (GPT-2, Llama, …): trainspect session start --id ID --model DIR",
        )
    name = args.name or Path(dataset.path).stem
    passes, skipped = _passes(args, dataset)
    saes = _saes(ctx, passes, skipped)
    timeline = Timeline(reporter, name)
    steps = args.steps or max(1, math.ceil(args.epochs * math.ceil(len(dataset.rows) / args.batch_size)))
    config = SimConfig(
        lr=args.lr,
        steps=steps,
        epochs=args.epochs if args.steps is None else steps / math.ceil(len(dataset.rows) / args.batch_size),
        batch_size=args.batch_size,
        grad_clip=args.grad_clip,
        max_len=args.max_len,
        beta=args.beta,
    )
    result = SimulationResult(
        name=name,
        dataset=dataset.path,
        format=dataset.format,
        rows=len(dataset.rows),
        config=config,
        passes=passes,
        skipped=skipped,
        timeline=[],
    )
    model: LoadedModel | None = None
    if any(p in passes for p in ("1", "2", "2b", "2c", "3")):
        reporter.progress(0.02, "loading the base model")
        model = load_base(session, ctx.models, backend="transformers")
        result.runtime = model.info()
    tokenizer = model.tokenizer if model is not None else _tokenizer(session.model_source)
    max_len = min(args.max_len, model.n_ctx) if model is not None else args.max_len
    if "0" in passes:
        reporter.progress(0.05, "pass 0: dataset quality")
        result.quality = timeline.run("0", quality_report, dataset, tokenizer, max_len)
    tensors: dict[str, torch.Tensor] = {}
    if model is not None:
        tensors = _model_passes(model, dataset, args, passes, saes, result, timeline, reporter, max_len)
    if "3" in passes and model is not None:
        timeline.run("checkpoint", checkpoint_pass, ctx, model, dataset, args, result, tensors, reporter, max_len)
    result.timeline = timeline.passes
    if args.out and distributed.is_writer():
        result.artifacts = artifacts.save(Path(args.out), result, tensors)
    reporter.progress(1.0, f"simulated {', '.join(passes)} on {len(dataset.rows)} rows")
    return Outcome(result, findings(result), follow_ups(result, args))


def _model_passes(
    model: LoadedModel,
    dataset: Dataset,
    args: SimulateInput,
    passes: list[str],
    saes: list[tuple[Any, SaeInfo]],
    result: SimulationResult,
    timeline: Timeline,
    reporter: Reporter,
    max_len: int,
) -> dict[str, torch.Tensor]:
    """Passes 1, 2 and 2c between the two checksums; returns the tensors part 2 reads back."""
    hf, device, rows = model.model, model.device, dataset.rows
    sae_map = {info.hook: sae.to(device).eval() for sae, info in saes}
    infos = {info.hook: info for _, info in saes}
    labels = {hook: labels_for(hook, info.spec, len(saes), args.labels) for hook, info in infos.items()}
    before = checksum(hf)
    requires = [p.requires_grad for p in hf.parameters()]
    tensors: dict[str, torch.Tensor] = {}
    sft_scores: dict[str, torch.Tensor] = {}
    base_acts: dict[str, torch.Tensor] = {}
    try:
        if "1" in passes or "2" in passes:
            if "2" in passes:
                for p in hf.parameters():
                    p.requires_grad_(True)
            sw = _landscape_pass(model, dataset, args, passes, sae_map, timeline, reporter, max_len, result)
            for hook, sums in sw.hooks.items():
                if "1" in passes:
                    base_acts[hook] = sums.base_acts_mean()
                    tensors[f"base_acts_mean.{hook}"] = base_acts[hook].float()
                if "2" in passes and sums.resid_grad is not None:
                    g = sums.resid_grad / sw.batches
                    tensors[f"resid_grad.{hook}"] = g.float()
                    if hook in base_acts:
                        info = infos[hook]
                        w_dec = sae_map[hook].W_dec.detach()
                        result.sae.append(
                            predict(hook, info.layer, g, w_dec, base_acts[hook], sums.tokens, labels[hook], args.top)
                        )
                        sft_scores[hook] = scores(g, w_dec, base_acts[hook])[0]
            if "2" in passes:
                tensors.update({f"mean_grad.{k}": v for k, v in sw.mean_grads().items()})
        if "2c" in passes:
            for p in hf.parameters():
                p.requires_grad_(True)  # the residual's gradient needs the graph; no parameter gradient is formed
            hooks = list(base_acts)
            n = math.ceil(len(rows) / args.batch_size)
            end = _first_order_end(passes, args)
            lo = 0.08 + (end - 0.08) * 0.65
            ps = timeline.run(
                "2c",
                preference_sweep,
                hf,
                model.n_layers,
                model.tokenizer,
                rows,
                batch_size=args.batch_size,
                max_len=max_len,
                beta=args.beta,
                hooks=hooks,
                device=device,
                on_batch=lambda i: reporter.progress(lo + (end - lo) * i / n, f"pass 2c: batch {i}/{n}"),
            )
            prediction, shifts = None, []
            if hooks:
                hook = hooks[0]
                g = ps.resid_grad[hook] / ps.batches
                w_dec = sae_map[hook].W_dec.detach()
                prediction = predict(hook, infos[hook].layer, g, w_dec, base_acts[hook], 0, labels[hook], args.top)
                if hook in sft_scores:
                    shifts = feature_shifts(
                        scores(g, w_dec, base_acts[hook])[0], sft_scores[hook], labels[hook], args.top
                    )
            result.preference = preference_report(ps, rows, args.beta, prediction, shifts)
        if _second_order_runs(passes, args):
            for p in hf.parameters():
                p.requires_grad_(False)  # the curvature is taken over float32 copies; no graph into the model
            tensors.update(second_order(model, dataset, args, passes, result, timeline, reporter, max_len, tensors))
    finally:
        for p, r in zip(hf.parameters(), requires, strict=True):
            p.requires_grad_(r)
            p.grad = None
    result.invariant = check(hf, before)
    return tensors


def _landscape_pass(
    model: LoadedModel,
    dataset: Dataset,
    args: SimulateInput,
    passes: list[str],
    sae_map: dict[str, Any],
    timeline: Timeline,
    reporter: Reporter,
    max_len: int,
    result: SimulationResult,
) -> Sweep:
    """Passes 1 and/or 2 in one sweep; pass 2's batches become step events through watch's signal engine. One
    process emits each batch's step as it finishes; under torchrun a rank holds only its own batches' readings
    until the sweep gathers them, so the steps (and the engine's signals) are emitted after the sweep, in batch
    order, inside the pass's timing (the front door shows rank 0's), and progress follows this rank's position in
    the dataset."""
    rows = dataset.rows
    pairs = [(r.prompt, r.answer) for r in rows]
    engine, live = SignalEngine(EngineConfig()), []
    n = math.ceil(len(rows) / args.batch_size)
    span = (_first_order_end(passes, args) - 0.08) * (0.65 if "2c" in passes else 1.0)
    deferred = distributed.world()[1] > 1

    def observe(reading: BatchGrads) -> None:
        snap = StepSnapshot(
            step=reading.index, loss=reading.loss, max_grad=reading.max_grad, grad_norms=reading.modules
        )
        fired = engine.observe(snap)
        reporter.emit(SIM_EVENTS.type("step"), {"run": result.name, "snapshot": snap.wire()})
        for s in fired:
            reporter.emit(SIM_EVENTS.type("signal"), {"run": result.name, "signal": s.model_dump(mode="json")})
        live.extend(fired)

    def on_batch(position: int, reading: BatchGrads | None) -> None:
        if reading is not None and not deferred:
            observe(reading)
        reporter.progress(0.08 + span * position / n, f"pass {label}: batch {position}/{n}")

    def run_sweep() -> Sweep:
        sw = sweep(
            model.model,
            model.n_layers,
            batches(model.tokenizer, pairs, [r.index for r in rows], args.batch_size, max_len),
            sae_map,
            acts="1" in passes,
            grads="2" in passes,
            device=model.device,
            on_batch=on_batch,
        )
        if deferred:
            for reading in sw.grads:
                observe(reading)
        return sw

    label = "+".join(p for p in ("1", "2") if p in passes)
    sw = timeline.run(label, run_sweep)
    if "2" in passes:
        if not sw.grads:
            raise ToolError(
                f"no batch of {dataset.path} has a token to train on after truncation to {max_len} tokens",
                "raise --max-len, or check that the rows have responses",
            )
        result.landscape = landscape(sw, args.grad_clip)
        result.signals = live + simulation_signals(result.landscape)
        for s in result.signals[len(live) :]:
            reporter.emit(SIM_EVENTS.type("signal"), {"run": result.name, "signal": s.model_dump(mode="json")})
    return sw


def _second_order_runs(passes: list[str], args: SimulateInput) -> bool:
    """Sharpness, 2b or 3: the curvature passes (second_order) run after passes 1, 2 and 2c."""
    return "2b" in passes or "3" in passes or bool(args.sharpness)


def _first_order_end(passes: list[str], args: SimulateInput) -> float:
    """Progress where passes 1, 2 and 2c end: the second-order passes take the rest."""
    return 0.55 if _second_order_runs(passes, args) else 0.98


def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ToolError(
            f"cannot load the tokenizer of {source}: {e}", "pass 0 needs the session model's tokenizer"
        ) from None
