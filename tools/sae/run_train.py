"""run_sae_train's run: collect one hook's activations through the runtime, train with sae-lens, save, evaluate
the saved SAE as load_sae will load it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from session.activations import run_probes, token_batches
from session.context import ToolContext
from session.models import load_base, load_checkpoint
from session.probes import read_probes
from session.sae import load_sae
from tools.sae import LOAD_SAE
from tools.sae.models import LossPoint, SaeTrainInput, SaeTrainResult
from tools.sae.report import train_findings
from tools.sae.train import HELD_OUT, MODES, evaluate, steps_for, train_topk
from toolserver.contract import FollowUp, Outcome, Reporter, ToolError, home

RAW_WEIGHTS = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False}


def run(ctx: ToolContext, args: SaeTrainInput, reporter: Reporter) -> Outcome[SaeTrainResult]:
    session = ctx.require_session()
    started = time.perf_counter()
    texts = read_probes(args.dataset or args.prompts)
    mode = MODES[args.mode]
    reporter.progress(0.02, "loading the model")
    model = load_checkpoint(session, args.checkpoint, ctx.models) if args.checkpoint else load_base(session, ctx.models)
    if not 0 <= args.layer < model.n_layers:
        raise ToolError(
            f"layer {args.layer} is out of range: the model has {model.n_layers} layers (0–{model.n_layers - 1})",
            "pick a layer in range",
        )
    hook = f"blocks.{args.layer}.hook_resid_post"
    max_length = min(args.max_length, model.n_ctx)
    reduce = "tokens" if model.kind == "llm" else "mean"
    rows: list[torch.Tensor] = []
    collected = 0
    batches = token_batches(model.tokenizer, texts.texts, batch_size=args.batch_size, max_length=max_length)
    for out in run_probes(model, batches, [hook], reduce, skip_first=model.kind == "llm"):
        rows.append(out.acts[hook].cpu())
        collected += rows[-1].shape[0]
        reporter.progress(0.05 + 0.15 * min(1.0, collected / mode["activations"]), f"{collected} activations collected")
        if collected >= mode["activations"]:
            break
    acts = torch.cat(rows)[: mode["activations"]]
    if acts.shape[0] < 20:
        raise ToolError(
            f"only {acts.shape[0]} activations from {len(texts.probes)} texts: too few to train an SAE",
            "pass a larger --dataset (a .txt or JSONL file of texts)",
        )
    d_sae = args.d_sae or mode["width"] * model.d_model
    k = args.k or max(1, min(32, d_sae // 8))
    if k > d_sae:
        raise ToolError(f"k {k} is larger than d_sae {d_sae}", "pick k ≤ d_sae")

    steps = steps_for(mode, acts.shape[0] - int(acts.shape[0] * HELD_OUT))

    def on_step(step: int, mse: float) -> None:
        reporter.progress(0.2 + 0.75 * step / steps, f"step {step}/{steps}: MSE {mse:.4g}")

    trained = train_topk(acts, d_sae=d_sae, k=k, steps=steps, seed=args.seed, device=model.device, on_step=on_step)
    out = _out_dir(args, session.id)
    meta = trained.sae.cfg.metadata
    meta.hook_name, meta.model_name, meta.prepend_bos = hook, session.model, False
    meta.context_size, meta.dataset_path = max_length, texts.source
    meta.model_from_pretrained_kwargs = dict(RAW_WEIGHTS)  # trained on the raw weights the runtime runs
    out.mkdir(parents=True, exist_ok=True)
    trained.sae.save_inference_model(str(out))
    saved, info = load_sae(str(out), d_model=model.d_model, n_layers=model.n_layers)  # as load_sae will see it
    fvu, l0, dead = evaluate(saved.to(model.device).eval(), trained.held_out.to(model.device))
    result = SaeTrainResult(
        out=str(out),
        layer=args.layer,
        hook=hook,
        mode=args.mode,
        model=args.checkpoint or session.model_source,
        architecture=info.architecture,
        d_in=model.d_model,
        d_sae=d_sae,
        k=k,
        source=texts.source,
        texts=len(texts.probes),
        activations=acts.shape[0],
        held_out=trained.held_out.shape[0],
        steps=trained.steps,
        batch=trained.batch,
        losses=[LossPoint(step=s, mse=m) for s, m in trained.losses],
        eval_fvu=fvu,
        eval_l0=l0,
        dead_features=dead,
        seconds=round(time.perf_counter() - started, 2),
        runtime=model.info(),
    )
    reporter.progress(1.0, f"saved to {out}")
    follow = [FollowUp(tool=LOAD_SAE.name, args={"sae": [str(out)]}, why="attach it to the session for run_sae_diff")]
    return Outcome(result, train_findings(result), follow)


def _out_dir(args: SaeTrainInput, session_id: str) -> Path:
    if args.out:
        out = Path(args.out).expanduser()
        if out.exists() and any(out.iterdir()):
            raise ToolError(f"output directory {out} exists and is not empty", "pass a new --out")
        return out.resolve()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return home() / "saes" / f"{session_id}-L{args.layer}-{args.mode}-{stamp}"
