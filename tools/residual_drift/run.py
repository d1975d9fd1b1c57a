"""run_residual_drift's run: both models on the same probes, the distance between their vectors per layer."""

from __future__ import annotations

from pathlib import Path

from scipy.stats import spearmanr

from session.activations import token_batches
from session.context import ToolContext
from session.models import load_pair
from session.probes import ProbeSummary, read_probes
from tools.residual_drift.compute import drift
from tools.residual_drift.models import DRIFT_FLOOR, GROWS_RHO, LayerDrift, ResidualDriftInput, ResidualDriftResult
from tools.residual_drift.report import findings, follow_ups
from toolserver.contract import Outcome, Reporter

REDUCTION = {
    "llm": "the last real token's hook_resid_post (padding side respected)",
    "embedding": "the mean of the layer's hidden state over real tokens (padding excluded)",
}


def run(ctx: ToolContext, args: ResidualDriftInput, reporter: Reporter) -> Outcome[ResidualDriftResult]:
    session = ctx.require_session()
    probes = read_probes(args.prompts)
    reporter.progress(0.05, f"loading the base model and {Path(args.checkpoint).name}")
    pair = load_pair(session, args.checkpoint, ctx.models)
    n_layers = pair.base.n_layers
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    max_length = min(args.max_length, pair.base.n_ctx)
    texts = probes.texts
    n_batches = -(-len(texts) // args.batch_size)

    def batches():  # noqa: ANN202  (a generator the progress bar follows)
        for i, batch in enumerate(
            token_batches(pair.base.tokenizer, texts, batch_size=args.batch_size, max_length=max_length)
        ):
            reporter.progress(0.1 + 0.85 * i / n_batches, f"batch {i + 1}/{n_batches}: base and checkpoint")
            yield batch

    reduce = "last" if session.kind == "llm" else "mean"
    stats, truncated = drift(pair, batches(), hooks, reduce)
    layers = [
        LayerDrift(
            layer="embed" if i == 0 else i - 1,
            hook=hook,
            cos_mean=s.cos_sum / s.n,
            cos_max=s.cos_max,
            rel_norm_mean=s.rel_sum / s.n,
            rel_norm_max=s.rel_max,
        )
        for i, (hook, s) in enumerate(stats.items())
    ]
    drifting = [d for d in layers if d.cos_mean > DRIFT_FLOOR]
    blocks = [d.cos_mean for d in layers[1:]]
    rho = float(spearmanr(range(len(blocks)), blocks).statistic) if len(blocks) > 2 and len(set(blocks)) > 1 else None
    path = Path(args.checkpoint)
    result = ResidualDriftResult(
        name=args.name or (path.name if path.is_dir() else path.stem),
        checkpoint=str(path.expanduser().resolve()),
        base=session.model_source,
        kind=session.kind,
        reduction=REDUCTION[session.kind],
        probes=ProbeSummary(source=probes.source, count=len(texts), max_length=max_length, truncated=truncated),
        layers=layers,
        start_layer=drifting[0].layer if drifting else None,
        peak_layer=max(layers, key=lambda d: d.cos_mean).layer if drifting else None,
        depth_rho=rho,
        grows_with_depth=bool(drifting) and rho is not None and rho >= GROWS_RHO,
        runtime=pair.base.info(),
    )
    reporter.progress(1.0, f"compared {len(texts)} probes at {len(layers)} layers")
    return Outcome(result, findings(result), follow_ups(result))
