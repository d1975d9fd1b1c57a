"""run_sae_diff's run: base and checkpoint through each SAE on the same probes, feature by feature."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from session import service
from session.activations import TokenBatch, run_pair, token_batches
from session.context import ToolContext
from session.models import Processing, load_pair
from session.probes import ProbeSet, ProbeSummary, read_probes
from session.sae import SaeInfo, cached_sae, processing_for, session_saes
from session.state import Session
from tools.sae.diff import Decision, LayerDiff, decide
from tools.sae.labels import labels_for, neuronpedia_url
from tools.sae.models import (
    DIGITS,
    TRANSFER_MIN_FVU,
    TRANSFER_RATIO,
    FeatureColumns,
    FeatureDelta,
    LayerSaeDiff,
    SaeDiffInput,
    SaeDiffResult,
    Transfer,
)
from tools.sae.report import diff_findings, diff_follow_ups
from toolserver.contract import Outcome, Reporter, ToolError


def chosen_saes(session: Session, args: SaeDiffInput, ctx: ToolContext) -> list[tuple[Any, SaeInfo]]:
    """--sae, else the session's SAEs (only the one at --layer when given)."""
    if args.sae:
        d_model, n_layers = service.dims(session)
        spec = str(Path(args.sae).expanduser().resolve()) if Path(args.sae).expanduser().exists() else args.sae
        sae, info = cached_sae(
            spec, ctx.models, d_model=d_model, n_layers=n_layers, default_layer=service.default_layer(session)
        )
        if args.layer is not None and info.layer != args.layer:
            raise ToolError(f"--sae {args.sae} reads layer {info.layer}, not --layer {args.layer}", "drop one of them")
        return [(sae, info)]
    saes = session_saes(session, ctx.models)
    if args.layer is None:
        return saes
    picked = [(s, i) for s, i in saes if i.layer == args.layer]
    if not picked:
        have = ", ".join(str(i.layer) for _, i in saes)
        raise ToolError(
            f"the session has no SAE at layer {args.layer} (it has layer {have})",
            "load one there with: trainspect load sae DIR, or pass --sae",
        )
    return picked


def run(ctx: ToolContext, args: SaeDiffInput, reporter: Reporter) -> Outcome[SaeDiffResult]:
    session = ctx.require_session()
    probes = read_probes(args.prompts)
    saes = chosen_saes(session, args, ctx)
    groups: dict[tuple[Processing, bool], list[tuple[Any, SaeInfo, str]]] = {}
    for sae, info in saes:
        processing, why = processing_for(info)
        prepend = bool(sae.cfg.metadata.prepend_bos) and session.kind == "llm"
        groups.setdefault((processing, prepend), []).append((sae, info, why))
    layers: list[LayerSaeDiff] = []
    truncated, runtime, max_length = 0, None, args.max_length
    for g, ((processing, prepend), members) in enumerate(groups.items()):
        reporter.progress(0.05 + 0.9 * g / len(groups), f"loading the base model and {Path(args.checkpoint).name}")
        pair = load_pair(session, args.checkpoint, ctx.models, processing=processing)
        runtime, max_length = pair.base.info(), min(args.max_length, pair.base.n_ctx)
        diffs = {info.hook: LayerDiff(sae.to(pair.base.device).eval()) for sae, info, _ in members}
        batches = _batches(
            pair.base.tokenizer,
            probes,
            args.batch_size,
            max_length,
            prepend,
            reporter,
            (0.05 + 0.9 * g / len(groups), 0.9 / len(groups)),
        )
        reduce = "tokens" if session.kind == "llm" else "mean"
        for base, tuned in run_pair(pair, batches, list(diffs), reduce, skip_first=session.kind == "llm"):
            truncated += base.batch.truncated if g == 0 else 0  # every group runs the same probes
            counts = base.counts if session.kind == "llm" else torch.ones_like(base.counts)
            for hook, diff in diffs.items():
                diff.add(base.acts[hook], tuned.acts[hook], counts)
        for sae, info, why in members:
            layers.append(_layer(info, sae, diffs[info.hook], args, why, prepend, len(saes), session.kind))
    path = Path(args.checkpoint)
    result = SaeDiffResult(
        name=args.name or (path.name if path.is_dir() else path.stem),
        checkpoint=str(path.expanduser().resolve()),
        base=session.model_source,
        kind=session.kind,
        probes=ProbeSummary(source=probes.source, count=len(probes.probes), max_length=max_length, truncated=truncated),
        layers=sorted(layers, key=lambda x: (x.layer, x.hook)),
        runtime=runtime,
    )
    reporter.progress(1.0, f"diffed {sum(x.d_sae for x in layers)} features at {len(layers)} layer(s)")
    return Outcome(result, diff_findings(result), diff_follow_ups(result))


def _batches(
    tokenizer: Any,
    probes: ProbeSet,
    batch_size: int,
    max_length: int,
    prepend: bool,
    reporter: Reporter,
    span: tuple[float, float],
) -> Iterator[TokenBatch]:
    texts = probes.texts
    n = -(-len(texts) // batch_size)
    for i, batch in enumerate(
        token_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, prepend_bos=prepend)
    ):
        reporter.progress(span[0] + span[1] * i / n, f"batch {i + 1}/{n}: base and checkpoint through the SAEs")
        yield batch


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.{DIGITS}g}") for v in values.tolist()]


def _layer(
    info: SaeInfo, sae: Any, diff: LayerDiff, args: SaeDiffInput, why: str, prepend: bool, n_saes: int, kind: str
) -> LayerSaeDiff:
    decision: Decision = decide(diff, fdr=args.fdr, min_effect=args.min_effect, threshold=args.threshold)
    labels = labels_for(info.hook, info.spec, n_saes, args.labels)
    neuronpedia = sae.cfg.metadata.neuronpedia_id if isinstance(sae.cfg.metadata.neuronpedia_id, str) else None
    base_mean, tuned_mean = diff.base.mean().numpy(), diff.tuned.mean().numpy()
    base_freq = (diff.base.fires / max(diff.base.units, 1)).numpy()
    tuned_freq = (diff.tuned.fires / max(diff.tuned.units, 1)).numpy()
    abs_delta = np.abs(decision.delta)

    def row(f: int) -> FeatureDelta:
        def opt(a: np.ndarray | None) -> float | None:
            return None if a is None or not np.isfinite(a[f]) else float(a[f])

        return FeatureDelta(
            feature=f,
            label=labels.get(f),
            url=neuronpedia_url(neuronpedia, f),
            base_mean=float(base_mean[f]),
            tuned_mean=float(tuned_mean[f]),
            delta=float(decision.delta[f]),
            base_freq=float(base_freq[f]),
            tuned_freq=float(tuned_freq[f]),
            effect=opt(decision.effect),
            p_value=opt(decision.p),
            q_value=opt(decision.q),
            changed=bool(decision.changed[f]),
        )

    order = np.lexsort((-abs_delta, ~decision.changed))  # changed first, then by |Δ|
    changed = [int(f) for f in np.argsort(-abs_delta, kind="stable") if decision.changed[f]]
    fvu_b, fvu_t = diff.base.fvu(), diff.tuned.fvu()
    ratio = fvu_t / fvu_b if fvu_b > 0 else None
    return LayerSaeDiff(
        layer=info.layer,
        hook=info.hook,
        sae=info.spec,
        architecture=info.architecture,
        d_sae=info.d_sae,
        unit="tokens" if kind == "llm" else "probes",
        units=diff.base.units,
        probes_tested=diff.probes,
        rule=decision.rule,
        n_changed=len(changed),
        mean_abs_delta=float(abs_delta.mean()),
        max_abs_delta=float(abs_delta.max()),
        top=[row(int(f)) for f in order[: args.top_k]],
        changed=[row(f) for f in changed],
        transfer=Transfer(
            fvu_base=fvu_b,
            fvu_tuned=fvu_t,
            ratio=ratio,
            ok=not (ratio is not None and ratio > TRANSFER_RATIO and fvu_t > TRANSFER_MIN_FVU),
        ),
        processing=why,
        prepend_bos=prepend,
        neuronpedia_id=neuronpedia,
        columns=FeatureColumns(
            base_mean=_round(base_mean),
            tuned_mean=_round(tuned_mean),
            base_freq=_round(base_freq),
            tuned_freq=_round(tuned_freq),
            q_value=[None] * info.d_sae if decision.q is None else _round(decision.q),
        ),
    )
