"""Two simulations side by side, as pure functions of their results (no model, no file): rows matched by content
hash, features by index per hook, tensors and modules by name.

Every section is compared only when both sides have its data; `missing` says which side lacks what. Rows are
matched by content, never by index: removing rows from a dataset shifts every later index.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable

from tools.simulate.models import (
    DeltaReport,
    InfluenceReport,
    InfluenceRow,
    Landscape,
    SaePrediction,
    Sharpness,
    SimulationResult,
)
from tools.simulate.quality import QualityReport
from tools.simulate_compare.models import (
    Change,
    CompareResult,
    DeltaCompare,
    FeatureChange,
    FeatureCompare,
    FeatureListed,
    FlagChange,
    FlagCount,
    FlaggedRow,
    HookCompare,
    InfluenceCompare,
    InfluenceTotals,
    LandscapeCompare,
    ListName,
    QualityCompare,
    RowChange,
    RowScore,
    SharpnessCompare,
    Side,
    TensorChange,
)

# where each section comes from, for the line that says a side lacks it
SOURCES = {
    "influence": "pass 2b",
    "features": "passes 1 and 2 with an SAE",
    "delta": "pass 3",
    "quality": "pass 0",
    "sharpness": "the curvature passes",
    "landscape": "pass 2",
}


def change(a: float | None, b: float | None) -> Change:
    return Change(a=a, b=b, delta=None if a is None or b is None else b - a)


def flag_change(a: bool, b: bool) -> FlagChange:
    return FlagChange(a=a, b=b, changed=a != b)


def _sections(r: SimulationResult) -> dict[str, bool]:
    """Which comparable sections a simulation holds (SOURCES' order)."""
    return {
        "influence": r.influence is not None,
        "features": bool(r.sae),
        "delta": r.delta is not None,
        "quality": r.quality is not None,
        "sharpness": r.sharpness is not None,
        "landscape": r.landscape is not None,
    }


def side(result: SimulationResult, path: str) -> Side:
    return Side(
        path=path,
        name=result.name,
        dataset=result.dataset,
        format=result.format,
        rows=result.rows,
        passes=result.passes,
        lr=result.config.lr,
        steps=result.config.steps,
        max_len=result.config.max_len,
        sections=[k for k, v in _sections(result).items() if v],
    )


def _missing(a: Side, b: Side) -> list[str]:
    """One line per section a side lacks, naming the side, the passes it ran and where the section comes from."""
    out = []
    for section, source in SOURCES.items():
        have_a, have_b = section in a.sections, section in b.sections
        if have_a and have_b:
            continue
        where = f"it comes from {source}"
        if not (have_a or have_b):
            out.append(f"{section}: neither simulation has it ({where})")
            continue
        lacking, other = ("B", b) if have_a else ("A", a)
        ran = ", ".join(other.passes) or "none"
        out.append(f"{section}: only {'A' if have_a else 'B'} has it; {lacking} ran passes {ran} ({where})")
    return out


def compare(
    a: SimulationResult, b: SimulationResult, *, top: int = 20, path_a: str = "", path_b: str = ""
) -> CompareResult:
    """Every section both simulations hold, compared; `missing` names the rest and the side that lacks it."""
    sa, sb = side(a, path_a), side(b, path_b)
    out = CompareResult(a=sa, b=sb, same_file=bool(path_a) and path_a == path_b, missing=_missing(sa, sb))
    if a.influence is not None and b.influence is not None:
        out.influence = influence(a.influence, b.influence, top)
    if a.sae and b.sae:
        out.features = features(a.sae, b.sae, top)
    if a.delta is not None and b.delta is not None:
        out.delta = delta(a.delta, b.delta, top)
    if a.quality is not None and b.quality is not None:
        out.quality = quality(a.quality, b.quality, a.influence, b.influence, top)
    if a.sharpness is not None and b.sharpness is not None:
        out.sharpness = sharpness(a.sharpness, b.sharpness)
    if a.landscape is not None and b.landscape is not None:
        out.landscape = landscape(a.landscape, b.landscape)
    return out


# ----- influence -------------------------------------------------------------------------------------------


def match_rows(
    a: Iterable[InfluenceRow], b: Iterable[InfluenceRow]
) -> tuple[list[tuple[InfluenceRow, InfluenceRow]], list[InfluenceRow], list[InfluenceRow]]:
    """(pairs, only in A, only in B) by content hash. Repeated rows (equal hashes) pair up in dataset order: the
    k-th copy in A with the k-th in B, so dropping one of three copies leaves one copy only in A."""
    waiting: dict[str, deque[InfluenceRow]] = defaultdict(deque)
    for r in b:
        waiting[r.hash].append(r)
    pairs, only_a = [], []
    for r in a:
        queue = waiting.get(r.hash)
        if queue:
            pairs.append((r, queue.popleft()))
        else:
            only_a.append(r)
    only_b = sorted((r for q in waiting.values() for r in q), key=lambda r: r.row)
    return pairs, only_a, only_b


def _totals(r: InfluenceReport) -> InfluenceTotals:
    total = math.fsum(s.score for s in r.scores)
    return InfluenceTotals(
        test=r.test,
        test_rows=r.test_rows,
        train_rows=r.train_rows,
        total=total,
        mean=total / len(r.scores) if r.scores else 0.0,
        harmful=sum(s.score > 0 for s in r.scores),
        predicted_removal=r.predicted_removal,
        test_loss=r.test_loss,
    )


def _incomparable(a: InfluenceReport, b: InfluenceReport) -> str | None:
    """Why the two sides' scores are not on one scale: IF is taken against each side's own test gradient and over
    its own parameters. The base test loss depends only on the model and the test rows, so a different one means
    different test rows even when the descriptions read the same."""
    why = []
    if a.test != b.test or a.test_rows != b.test_rows:
        why.append(f"the test sets differ (A: {a.test}, {a.test_rows} rows; B: {b.test}, {b.test_rows} rows)")
    elif not math.isclose(a.test_loss, b.test_loss, rel_tol=1e-5, abs_tol=1e-7):
        why.append(
            f"the base test loss differs ({a.test_loss:.6g} vs {b.test_loss:.6g}): different test rows or models"
        )
    if a.param_pattern != b.param_pattern or a.params != b.params:
        why.append(
            f"the influence parameters differ (A: {a.param_pattern or 'every parameter'}, {a.params:,}; "
            f"B: {b.param_pattern or 'every parameter'}, {b.params:,})"
        )
    if not why:
        return None
    return (
        "; ".join(why) + ": each side's IF is taken against its own test gradient over its own parameters, so the "
        "scores are not directly comparable"
    )


def _flip(a: float, b: float) -> str | None:
    if a < 0 < b:
        return "to_harmful"
    if b < 0 < a:
        return "to_helpful"
    return None


def influence(a: InfluenceReport, b: InfluenceReport, top: int) -> InfluenceCompare:
    pairs, only_a, only_b = match_rows(a.scores, b.scores)
    texts = {r.hash: r.text for rep in (a, b) for r in (*rep.most_harmful, *rep.most_helpful) if r.text}
    changes = [
        RowChange(
            hash=x.hash,
            row_a=x.row,
            row_b=y.row,
            line_a=x.line,
            line_b=y.line,
            a=x.score,
            b=y.score,
            delta=y.score - x.score,
            flipped=_flip(x.score, y.score),
            text=texts.get(x.hash),
        )
        for x, y in pairs
    ]
    by_size = sorted(changes, key=lambda c: (-abs(c.delta), c.row_a))
    flipped = [c for c in by_size if c.flipped]

    def one_side(rows: list[InfluenceRow]) -> list[RowScore]:
        ranked = sorted(rows, key=lambda r: (-r.score, r.row))[:top]
        return [RowScore(hash=r.hash, row=r.row, line=r.line, score=r.score, text=texts.get(r.hash)) for r in ranked]

    ta, tb = _totals(a), _totals(b)
    note = _incomparable(a, b)
    return InfluenceCompare(
        convention=a.convention,
        comparable=note is None,
        note=note,
        a=ta,
        b=tb,
        total=change(ta.total, tb.total),
        mean=change(ta.mean, tb.mean),
        harmful=change(ta.harmful, tb.harmful),
        predicted_removal=change(a.predicted_removal, b.predicted_removal),
        test_loss=change(a.test_loss, b.test_loss),
        matched=len(pairs),
        removed=len(only_a),
        removed_harmful=sum(r.score > 0 for r in only_a),
        removed_harmful_score=math.fsum(r.score for r in only_a if r.score > 0),
        added=len(only_b),
        added_harmful=sum(r.score > 0 for r in only_b),
        flipped_to_harmful=sum(c.flipped == "to_harmful" for c in changes),
        flipped_to_helpful=sum(c.flipped == "to_helpful" for c in changes),
        changes=by_size[:top],
        flipped=flipped[:top],
        removed_rows=one_side(only_a),
        added_rows=one_side(only_b),
    )


# ----- SAE feature predictions -----------------------------------------------------------------------------


def _listed(p: SaePrediction) -> dict[int, FeatureListed]:
    lists: tuple[tuple[ListName, list], ...] = (("strengthen", p.strengthen), ("suppress", p.suppress))
    return {
        f.feature: FeatureListed(feature=f.feature, label=f.label, score=f.score, list=name)
        for name, scores in lists
        for f in scores
    }


def _hook(a: SaePrediction, b: SaePrediction, top: int) -> HookCompare:
    la, lb = _listed(a), _listed(b)
    changes = [
        FeatureChange(
            feature=f,
            label=lb[f].label or la[f].label,
            a=la[f].score,
            b=lb[f].score,
            delta=lb[f].score - la[f].score,
            list_a=la[f].list,
            list_b=lb[f].list,
        )
        for f in la
        if f in lb
    ]

    def by_score(items: Iterable[FeatureListed]) -> list[FeatureListed]:
        return sorted(items, key=lambda x: (-abs(x.score), x.feature))[:top]

    return HookCompare(
        hook=a.hook,
        d_sae=a.d_sae,
        listed_a=len(la),
        listed_b=len(lb),
        resid_grad_norm=change(a.resid_grad_norm, b.resid_grad_norm),
        matched=len(changes),
        crossed=sum(c.list_a != c.list_b for c in changes),
        changes=sorted(changes, key=lambda c: (-abs(c.delta), c.feature))[:top],
        new=by_score(v for f, v in lb.items() if f not in la),
        dropped=by_score(v for f, v in la.items() if f not in lb),
    )


def features(a: list[SaePrediction], b: list[SaePrediction], top: int) -> FeatureCompare:
    pa, pb = {p.hook: p for p in a}, {p.hook: p for p in b}
    shared = [h for h in pa if h in pb]
    return FeatureCompare(
        convention=a[0].convention,
        hooks=[_hook(pa[h], pb[h], top) for h in shared if pa[h].d_sae == pb[h].d_sae],
        only_a=[h for h in pa if h not in pb],
        only_b=[h for h in pb if h not in pa],
        width_differs=[f"{h} (d_sae {pa[h].d_sae} vs {pb[h].d_sae})" for h in shared if pa[h].d_sae != pb[h].d_sae],
    )


# ----- effective-LR map ------------------------------------------------------------------------------------


def _log_ratio(a: float, b: float) -> float:
    """|ln(b/a)|: how far apart two rates are, either way (inf when one is 0 or the signs differ)."""
    if a == b:
        return 0.0
    if a == 0 or b == 0 or (a < 0) != (b < 0):
        return math.inf
    return abs(math.log(b / a))


def delta(a: DeltaReport, b: DeltaReport, top: int) -> DeltaCompare:
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    rows = [
        TensorChange(
            name=n,
            eta_eff_a=ta[n].eta_eff,
            eta_eff_b=tb[n].eta_eff,
            ratio=tb[n].eta_eff / ta[n].eta_eff if ta[n].eta_eff != 0 else None,
            curvature_a=ta[n].curvature,
            curvature_b=tb[n].curvature,
            delta_norm_a=ta[n].delta_norm,
            delta_norm_b=tb[n].delta_norm,
            clipped_a=ta[n].clipped,
            clipped_b=tb[n].clipped,
        )
        for n in ta
        if n in tb
    ]
    ratios = [r.ratio for r in rows if r.ratio is not None and r.eta_eff_a > 0]
    return DeltaCompare(
        rule_a=a.rule,
        rule_b=b.rule,
        lr=change(a.lr, b.lr),
        steps=change(a.steps, b.steps),
        matched=len(rows),
        only_a=[n for n in ta if n not in tb],
        only_b=[n for n in tb if n not in ta],
        clipped=change(len(a.clipped), len(b.clipped)),
        newly_clipped=[r.name for r in rows if r.clipped_b and not r.clipped_a],
        unclipped=[r.name for r in rows if r.clipped_a and not r.clipped_b],
        median_ratio=statistics.median(ratios) if ratios else None,
        tensors=sorted(rows, key=lambda r: -_log_ratio(r.eta_eff_a, r.eta_eff_b))[:top],
    )


# ----- dataset quality -------------------------------------------------------------------------------------


def _counts(a: QualityReport, b: QualityReport) -> list[FlagCount]:
    def pair(q: QualityReport) -> list[tuple[str, float | None]]:
        return [
            ("rows", q.rows),
            ("harmful-list rows", q.harmful.rows),
            ("harmful-list hits", q.harmful.hits),
            ("assistant-speak rows", q.assistant_speak.rows),
            ("assistant-speak hits", q.assistant_speak.hits),
            ("rows over max_len", q.lengths.over),
            ("exact duplicate groups", q.exact_duplicates.groups),
            ("exact copies", q.exact_duplicates.copies),
            ("near-duplicate pairs", q.near_duplicates.pairs),
            ("near-paraphrase blocks", q.diversity.blocks),
            ("diversity (mean instruction Jaccard)", q.diversity.score),
        ]

    return [
        FlagCount(flag=name, **change(x, y).model_dump()) for (name, x), (_, y) in zip(pair(a), pair(b), strict=True)
    ]


def _flagged(q: QualityReport) -> dict[str, dict[int, tuple[int, str]]]:
    """Per flag kind, the rows its lists name (capped at 50 entries): line → (row, what matched)."""
    out: dict[str, dict[int, tuple[int, str]]] = {}
    for name, scan in (("harmful", q.harmful), ("assistant_speak", q.assistant_speak)):
        rows: dict[int, tuple[int, list[str]]] = {}
        for hit in scan.flagged:
            terms = rows.setdefault(hit.line, (hit.row, []))[1]
            term = f"'{hit.term}' ({hit.category}, {hit.field})"
            if term not in terms:
                terms.append(term)
        out[name] = {line: (row, ", ".join(terms)) for line, (row, terms) in rows.items()}
    out["too_long"] = {
        r.line: (r.row, f"{r.tokens} {r.sequence} tokens > max_len {q.lengths.max_len}") for r in q.lengths.over_rows
    }
    return out


def _complete(q: QualityReport) -> dict[str, bool]:
    """Whether each kind's listed rows are all its flagged rows (lists stop at 50 entries)."""
    return {
        "harmful": len({h.row for h in q.harmful.flagged}) == q.harmful.rows,
        "assistant_speak": len({h.row for h in q.assistant_speak.flagged}) == q.assistant_speak.rows,
        "too_long": len(q.lengths.over_rows) == q.lengths.over,
    }


def quality(
    a: QualityReport,
    b: QualityReport,
    inf_a: InfluenceReport | None,
    inf_b: InfluenceReport | None,
    top: int,
) -> QualityCompare:
    counts = _counts(a, b)
    notes = []
    if a.lists_version != b.lists_version:
        notes.append(f"phrase lists differ ({a.lists_version} vs {b.lists_version})")
    if a.lengths.max_len != b.lengths.max_len:
        notes.append(f"too-long rows are against max_len {a.lengths.max_len} in A and {b.lengths.max_len} in B")
    if a.tokenizer != b.tokenizer:
        notes.append(f"lengths and token overlaps are in different tokenizers ({a.tokenizer} vs {b.tokenizer})")
    if inf_a is None or inf_b is None:
        notes.append(
            "quality flags name rows by index, which removing rows shifts: flagged rows are matched by content "
            "through the influence scores' row hashes, which "
            + ("neither side has" if inf_a is None and inf_b is None else f"{'A' if inf_a is None else 'B'} lacks")
            + " (pass 2b), so only the counts are compared"
        )
        return QualityCompare(counts=counts, matched_by="none", note="; ".join(notes), cleared=[], introduced=[])

    hash_a = {r.line: r.hash for r in inf_a.scores}
    hash_b = {r.line: r.hash for r in inf_b.scores}
    present_a, present_b = set(hash_a.values()), set(hash_b.values())
    fa, fb = _flagged(a), _flagged(b)
    ca, cb = _complete(a), _complete(b)
    cleared: list[FlaggedRow] = []
    introduced: list[FlaggedRow] = []
    unhashed = 0
    unsure = 0

    def rows_of(flags: dict[int, tuple[int, str]], hashes: dict[int, str], name: str) -> list[tuple[str, FlaggedRow]]:
        nonlocal unhashed
        out = []
        for line, (row, detail) in sorted(flags.items()):
            h = hashes.get(line)
            if h is None:  # a held-out test row: influence scores cover the training rows only
                unhashed += 1
                continue
            fields = {"flag": name, "hash": h, "row": row, "line": line, "detail": detail}
            out.append((h, FlaggedRow.model_validate(fields)))
        return out

    for name in ("harmful", "assistant_speak", "too_long"):
        here_a, here_b = rows_of(fa[name], hash_a, name), rows_of(fb[name], hash_b, name)
        flagged_a, flagged_b = {h for h, _ in here_a}, {h for h, _ in here_b}
        for h, row in here_a:
            if h in flagged_b:
                continue
            if h not in present_b or cb[name]:  # gone from B, or B's list is whole and does not name it
                cleared.append(row)
            else:
                unsure += 1
        for h, row in here_b:
            if h in flagged_a:
                continue
            if h not in present_a or ca[name]:
                introduced.append(row)
            else:
                unsure += 1
    if unhashed:
        notes.append(f"{unhashed} flagged row(s) are held-out test rows without an influence hash: counted only")
    if unsure:
        notes.append(
            f"{unsure} flagged row(s) are in both datasets but past the other side's capped list (50 entries): "
            "not listed as cleared or introduced"
        )
    if not all(ca.values()) or not all(cb.values()):
        notes.append("the flag lists hold the first 50 entries: the row lists cover those, the counts every row")
    return QualityCompare(
        counts=counts,
        matched_by="hash",
        note="; ".join(notes) or None,
        cleared=cleared[:top],
        introduced=introduced[:top],
    )


# ----- sharpness and landscape -----------------------------------------------------------------------------


def sharpness(a: Sharpness, b: Sharpness) -> SharpnessCompare:
    flags = {
        "unstable": flag_change(a.unstable, b.unstable),
        "ntk_unreliable": flag_change(a.ntk_unreliable, b.ntk_unreliable),
        "converged": flag_change(a.converged, b.converged),
    }
    yes = {True: "yes", False: "no"}
    return SharpnessCompare(
        lambda_max=change(a.lambda_max, b.lambda_max),
        lambda_min=change(a.lambda_min, b.lambda_min),
        stability_limit=change(a.stability_limit, b.stability_limit),
        changed=[f"{k}: {yes[v.a]} → {yes[v.b]}" for k, v in flags.items() if v.changed],
        **flags,
    )


def landscape(a: Landscape, b: Landscape) -> LandscapeCompare:
    dead_a, dead_b = set(a.dead), set(b.dead)
    return LandscapeCompare(
        batches=change(a.batches, b.batches),
        loss_mean=change(a.loss_mean, b.loss_mean),
        max_grad_mean=change(a.max_grad_mean, b.max_grad_mean),
        dead=change(len(a.dead), len(b.dead)),
        dead_added=[m for m in b.dead if m not in dead_a],
        dead_removed=[m for m in a.dead if m not in dead_b],
    )
