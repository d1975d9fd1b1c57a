"""run_model_diff's run: both models generate and score the same sequences; the scores, calibration and the
session's regression tracker follow from those numbers alone."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

from session.context import ToolContext
from session.generation import Generation
from session.models import load_pair
from session.state import ScoreRun
from tools.model_diff import scores as sc
from tools.model_diff.calibration import bootstrap_difference, calibrate
from tools.model_diff.evalset import EvalRow, read_eval
from tools.model_diff.hedges import VERSION, hedge
from tools.model_diff.models import (
    DEFINITIONS,
    HIGHER_IS_BETTER,
    CalibrationDiff,
    CategoryScores,
    HedgeHit,
    LowConfidenceRow,
    ModelDiffInput,
    ModelDiffResult,
    RowResult,
    Scores,
    TopicEce,
    Triple,
)
from tools.model_diff.report import findings, follow_ups
from tools.model_diff.scoring import RowScores, build_sequences, generate, references, score
from toolserver.contract import Outcome, Reporter, ToolError, atomic_write, now_iso


class _Side:
    """One model's measurements on every row."""

    def __init__(self, gens: list[Generation], scored: list[RowScores], preds: list[sc.Prediction | None]) -> None:
        self.gens, self.scored, self.preds = gens, scored, preds


def _triple(a: float | None, b: float | None) -> Triple:
    return Triple(base=a, checkpoint=b, delta=b - a if a is not None and b is not None else None)


def run(ctx: ToolContext, args: ModelDiffInput, reporter: Reporter) -> Outcome[ModelDiffResult]:
    session = ctx.require_session()
    if session.kind != "llm":
        raise ToolError(
            "model-diff scores generations and next-token probabilities: the session's model is an encoder",
            "start an LLM session; for embedding models use residual-drift or weight-diff",
        )
    evals = read_eval(args.eval)
    rows = evals.rows
    reporter.progress(0.02, f"loading the base model and {Path(args.checkpoint).name}")
    pair = load_pair(session, args.checkpoint, ctx.models, backend="transformers")  # KV-cached decoding, no hooks
    base_model, tuned_model = pair.base, pair.tuned
    tok = pair.base.tokenizer
    reporter.progress(0.1, f"generating: base ({len(rows)} rows)")
    base_gens = generate(base_model, rows, args.max_new_tokens, args.batch_size)
    reporter.progress(0.3, "generating: checkpoint")
    ck_gens = generate(tuned_model, rows, args.max_new_tokens, args.batch_size)
    answers, refs = references(tok, rows, base_gens)
    seqs = build_sequences(tok, rows, refs, args.perturbations, args.seed)
    responses = {i for i, r in enumerate(rows) if r.kind == "response"}
    sides = []
    for label, model, gens, (lo, hi) in (
        ("base", base_model, base_gens, (0.5, 0.7)),
        ("checkpoint", tuned_model, ck_gens, (0.7, 0.9)),
    ):

        def on_batch(i: int, n: int, label: str = label, lo: float = lo, hi: float = hi) -> None:
            reporter.progress(lo + (hi - lo) * i / max(1, n), f"scoring: {label}, batch {i + 1}/{n}")

        scored = score(model, seqs, len(rows), responses, args.batch_size, on_batch)
        preds = [
            sc.prediction(r, s, g, len(a), tok.decode) for r, s, g, a in zip(rows, scored, gens, answers, strict=True)
        ]
        sides.append(_Side(gens, scored, preds))
    base, ck = sides
    reporter.progress(0.92, "calibration and the regression tracker")
    ref_lengths = [len(ref) if ref else len(answers[i]) or None for i, ref in enumerate(refs)]  # choice: its answer

    def scores_of(idx: list[int]) -> Scores:
        def one(side: _Side) -> tuple[float | None, float | None, float | None, float | None]:
            sup, _ = sc.suppression([side.gens[i] for i in idx], [ref_lengths[i] for i in idx])
            cal = calibrate(*_flat([side.preds[i] for i in idx]))
            return (
                sc.consistency([side.scored[i] for i in idx]),
                sup,
                sc.robustness([rows[i] for i in idx], [side.scored[i] for i in idx]),
                cal.accuracy,
            )

        a, b = one(base), one(ck)
        return Scores(
            rows=len(idx), consistency=_triple(a[0], b[0]), suppression=_triple(a[1], b[1]),
            robustness=_triple(a[2], b[2]), accuracy=_triple(a[3], b[3]),
        )  # fmt: skip

    everything = list(range(len(rows)))
    categories = sorted({r.category for r in rows})
    per_category = [
        CategoryScores(category=c, **scores_of([i for i, r in enumerate(rows) if r.category == c]).model_dump())
        for c in categories
    ]
    overall = scores_of(everything)
    hedges = []
    for label, side in (("base", base), ("checkpoint", ck)):
        phrases = [hedge(g.text) for g in side.gens]
        hedges += [
            HedgeHit(
                model=label, category=rows[i].category, prompt=rows[i].prompt, phrase=p, generation=side.gens[i].text
            )
            for i, p in enumerate(phrases)
            if p is not None
        ]
    calibration = _calibration(rows, base.preds, ck.preds, args)
    low = [
        LowConfidenceRow(
            prompt=r.prompt,
            reference=r.answer,
            answer=p.answer,
            confidence=p.confidence,
            correct=all(p.correct) if r.kind != "response" else None,
            topic=r.topic,
            category=r.category,
        )  # fmt: skip
        for r, p in zip(rows, ck.preds, strict=True)
        if p is not None and p.confidence < args.low_confidence
    ]
    exported = _export(args.export_low_confidence, low) if args.export_low_confidence else None
    current = {c.category: _tracked(c) for c in per_category} | {"all": _tracked(overall)}
    prior = session.runs[-1] if session.runs else None
    path = Path(args.checkpoint).expanduser()
    name = args.name or (path.name if path.is_dir() else path.stem)
    flags = sc.flags(prior.scores if prior else None, current, prior.name if prior else "", HIGHER_IS_BETTER)
    run_id = uuid.uuid4().hex[:12]
    session.runs.append(
        ScoreRun(id=run_id, created_at=now_iso(), name=name, checkpoint=str(path.resolve()), scores=current)
    )
    session.save()
    result = ModelDiffResult(
        name=name,
        checkpoint=str(path.resolve()),
        base=session.model_source,
        eval_source=evals.source,
        rows=len(rows),
        bad_rows=evals.bad_rows,
        definitions=DEFINITIONS,
        hedges_version=VERSION,
        overall=overall,
        categories=per_category,
        hedges=hedges,
        calibration=calibration,
        low_confidence_threshold=args.low_confidence,
        low_confidence=low,
        exported=exported,
        run_id=run_id,
        regressions=flags,
        prior_run=prior.name if prior else None,
        per_row=[_row(r, base.gens[i], ck.gens[i], base.preds[i], ck.preds[i]) for i, r in enumerate(rows)],
        runtime=base_model.info(),
    )
    reporter.progress(1.0, f"scored {len(rows)} rows on both models")
    return Outcome(result, findings(result), follow_ups(result))


def _row(r: EvalRow, g0: Generation, g1: Generation, p0: sc.Prediction | None, p1: sc.Prediction | None) -> RowResult:
    def correct(p: sc.Prediction | None) -> float | None:
        return sum(p.correct) / len(p.correct) if p is not None and p.correct else None

    return RowResult(
        prompt=r.prompt, category=r.category, topic=r.topic, kind=r.kind, base=g0.text, checkpoint=g1.text,
        base_confidence=p0.confidence if p0 else None, checkpoint_confidence=p1.confidence if p1 else None,
        base_correct=correct(p0), checkpoint_correct=correct(p1),
    )  # fmt: skip


def _tracked(s: Scores) -> dict[str, float | None]:
    return {"consistency": s.consistency.checkpoint, "suppression": s.suppression.checkpoint,
            "robustness": s.robustness.checkpoint}  # fmt: skip


def _flat(preds: Sequence[sc.Prediction | None]) -> tuple[list[float], list[bool]]:
    conf = [c for p in preds if p is not None for c in p.confidences]
    corr = [y for p in preds if p is not None for y in p.correct]
    return conf, corr


def _calibration(
    rows: Sequence[EvalRow],
    base: Sequence[sc.Prediction | None],
    ck: Sequence[sc.Prediction | None],
    args: ModelDiffInput,
) -> CalibrationDiff:
    a, b = calibrate(*_flat(base)), calibrate(*_flat(ck))
    both = [i for i in range(len(rows)) if base[i] is not None and ck[i] is not None]
    ci = None
    if len(both) >= 2:
        ci = bootstrap_difference(
            [(base[i].confidences, base[i].correct) for i in both],  # type: ignore[union-attr]
            [(ck[i].confidences, ck[i].correct) for i in both],  # type: ignore[union-attr]
            args.bootstrap,
            args.seed,
        )
    topics = []
    for topic in sorted({r.topic for r in rows if r.topic}):
        idx = [i for i, r in enumerate(rows) if r.topic == topic]
        ta, tb = calibrate(*_flat([base[i] for i in idx])), calibrate(*_flat([ck[i] for i in idx]))
        topics.append(
            TopicEce(topic=topic, rows=len(idx), base=ta.ece, checkpoint=tb.ece, too_few=len(idx) < args.min_topic_rows)
        )
    delta = b.ece - a.ece if a.ece is not None and b.ece is not None else None
    return CalibrationDiff(
        base=a, checkpoint=b, ece_delta=delta, ece_delta_ci=ci,
        significant=ci is not None and (ci[0] > 0 or ci[1] < 0), topics=topics,
    )  # fmt: skip


def _export(path: str, rows: list[LowConfidenceRow]) -> str:
    """The low-confidence rows as a labeled JSONL dataset for the next training iteration (written atomically)."""
    out = Path(path).expanduser()
    lines = [
        json.dumps(
            {
                "prompt": r.prompt,
                "reference": r.reference,
                "answer": r.answer,
                "confidence": r.confidence,
                "correct": r.correct,
                "topic": r.topic,
                "category": r.category,
            }
        )  # fmt: skip
        for r in rows
    ]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, "".join(line + "\n" for line in lines))
    except OSError as e:
        raise ToolError(f"cannot write {out}: {e.strerror}", "choose a writable --export-low-confidence path") from None
    return str(out.resolve())
