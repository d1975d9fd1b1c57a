"""What people and agents read of a comparison: ranked findings with their numbers (harmful rows gone, rows that
flipped sign, sharpness crossing 2/η, new dead modules first), follow-up simulations, the card and a table."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tools.simulate import SPEC as SIMULATE
from tools.simulate.artifacts import RESULT
from tools.simulate.models import PASSES
from tools.simulate_compare.models import (
    CARD_ROWS,
    Change,
    CompareResult,
    DeltaCompare,
    FeatureCompare,
    FeatureListed,
    InfluenceCompare,
    LandscapeCompare,
    QualityCompare,
    RowChange,
    RowScore,
    SharpnessCompare,
    Side,
    SimulationCompareCard,
)
from toolserver.contract import SEVERITY_RANK, Finding, FollowUp

NAMED = 5  # rows, features, tensors or modules named in one finding
M = TypeVar("M", bound=BaseModel)


def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3g}"


def _ab(c: Change, signed: bool = False) -> str:
    """'a → b (Δ +d)'."""
    f = _s if signed else _g
    return f"{f(c.a)} → {f(c.b)} (Δ {_s(c.delta)})"


def _names(names: list[str], total: int | None = None) -> str:
    total = len(names) if total is None else total
    more = f" and {total - NAMED} more" if total > NAMED else ""
    return ", ".join(names[:NAMED]) + more


def _row(r: RowScore) -> str:
    return f"row {r.row} (line {r.line}) IF {r.score:+.3g}"


def _moved(c: RowChange) -> str:
    return f"row {c.row_a}→{c.row_b} {c.a:+.3g} → {c.b:+.3g}"


def _feature(f: FeatureListed) -> str:
    return f"F{f.feature}{f' ({f.label})' if f.label else ''} {f.score:+.3g}"


# ----- findings --------------------------------------------------------------------------------------------


def _influence(inf: InfluenceCompare) -> list[Finding]:
    out = []
    if not inf.comparable:
        out.append(Finding(severity="warn", text=f"influence: {inf.note}"))
    if inf.removed:
        helpful = inf.removed - inf.removed_harmful
        if inf.removed_harmful:
            harmful = [r for r in inf.removed_rows if r.score > 0]
            out.append(
                Finding(
                    text=f"{inf.removed_harmful} of the {inf.removed} row(s) only in A were harmful there (IF > 0, "
                    f"Σ IF {inf.removed_harmful_score:+.4g}): {_names([_row(r) for r in harmful], inf.removed_harmful)}"
                    f" — gone from B{f', with {helpful} helpful row(s)' if helpful else ''}; harmful rows "
                    f"{inf.a.harmful} of {inf.a.train_rows} in A, {inf.b.harmful} of {inf.b.train_rows} in B"
                )
            )
        else:
            out.append(
                Finding(
                    severity="warn",
                    text=f"all {inf.removed} row(s) only in A were helpful there (IF ≤ 0): "
                    f"{_names([_row(r) for r in inf.removed_rows], inf.removed)} — removing them is predicted to "
                    "raise the test loss, not lower it",
                )
            )
    if inf.added:
        added = [r for r in inf.added_rows if r.score > 0]
        out.append(
            Finding(
                severity="warn" if inf.added_harmful else "info",
                text=f"{inf.added} row(s) only in B, {inf.added_harmful} harmful there (IF > 0)"
                + (f": {_names([_row(r) for r in added], inf.added_harmful)}" if added else ""),
            )
        )
    to_harmful = [c for c in inf.flipped if c.flipped == "to_harmful"]
    to_helpful = [c for c in inf.flipped if c.flipped == "to_helpful"]
    if inf.flipped_to_harmful:
        out.append(
            Finding(
                severity="warn",
                text=f"{inf.flipped_to_harmful} row(s) in both flipped helpful → harmful (IF < 0 in A, > 0 in B): "
                f"{_names([_moved(c) for c in to_harmful], inf.flipped_to_harmful)}",
            )
        )
    if inf.flipped_to_helpful:
        out.append(
            Finding(
                text=f"{inf.flipped_to_helpful} row(s) in both flipped harmful → helpful (IF > 0 in A, < 0 in B): "
                f"{_names([_moved(c) for c in to_helpful], inf.flipped_to_helpful)}"
            )
        )
    largest = f"; largest change {_moved(inf.changes[0])}" if inf.changes else ""
    out.append(
        Finding(
            text=f"test-loss influence over {inf.matched} matched row(s): Σ IF {_ab(inf.total, True)}, mean "
            f"{_ab(inf.mean, True)}, harmful rows {_ab(inf.harmful)}, predicted drop from removing them "
            f"{_ab(inf.predicted_removal)}, base test loss {_ab(inf.test_loss)}{largest}"
        )
    )
    return out


def _sharpness(sh: SharpnessCompare, a: Side, b: Side) -> list[Finding]:
    lm, lim = sh.lambda_max, sh.stability_limit
    out = []
    if sh.unstable.changed and sh.unstable.b:
        out.append(
            Finding(
                severity="critical",
                text=f"sharpness crosses 2/η: B's λ_max {_g(lm.b)} is above 2/η = {_g(lim.b)} at lr {b.lr:g} (A's "
                f"{_g(lm.a)} was below {_g(lim.a)}): gradient descent on B is predicted unstable",
            )
        )
    elif sh.unstable.changed:
        out.append(
            Finding(
                text=f"sharpness back under 2/η: B's λ_max {_g(lm.b)} is below 2/η = {_g(lim.b)} at lr {b.lr:g} "
                f"(A's {_g(lm.a)} was above {_g(lim.a)})"
            )
        )
    elif sh.unstable.a:
        out.append(
            Finding(
                severity="warn",
                text=f"both sides are unstable: λ_max {_g(lm.a)} (A) and {_g(lm.b)} (B) above 2/η = {_g(lim.a)} and "
                f"{_g(lim.b)}",
            )
        )
    unconverged = [s for s, c in (("A", sh.converged.a), ("B", sh.converged.b)) if not c]
    out.append(
        Finding(
            text=f"sharpness λ_max {_ab(lm)}, λ_min {_ab(sh.lambda_min)}, 2/η {_g(lim.a)} / {_g(lim.b)}"
            + (f"; changed: {', '.join(sh.changed)}" if sh.changed else "; no flag changed")
            + (f"; Lanczos did not converge on {' and '.join(unconverged)}" if unconverged else "")
        )
    )
    return out


def _landscape(land: LandscapeCompare) -> list[Finding]:
    out = []
    if land.dead_added:
        out.append(
            Finding(
                severity="warn",
                text=f"{len(land.dead_added)} module(s) dead in B that learn in A (mean grad norm < 1e-6 over all "
                f"batches): {_names(land.dead_added)}",
            )
        )
    if land.dead_removed:
        out.append(
            Finding(text=f"{len(land.dead_removed)} module(s) dead in A get gradient in B: {_names(land.dead_removed)}")
        )
    out.append(
        Finding(
            text=f"gradient landscape: loss mean {_ab(land.loss_mean)}, max grad norm mean {_ab(land.max_grad_mean)}, "
            f"dead modules {_ab(land.dead)}, batches {_ab(land.batches)}"
        )
    )
    return out


def _quality(q: QualityCompare) -> list[Finding]:
    out = []
    counts = {c.flag: c for c in q.counts}
    harm = counts["harmful-list rows"]
    introduced = [r for r in q.introduced if r.flag == "harmful"]
    cleared = [r for r in q.cleared if r.flag == "harmful"]
    if introduced or (harm.delta or 0) > 0:
        named = f": {_names([f'row {r.row} {r.detail}' for r in introduced])}" if introduced else ""
        out.append(Finding(severity="critical", text=f"harmful-list rows {_ab(harm)}: B matches rows A did not{named}"))
    elif (harm.delta or 0) < 0 or cleared:
        named = f" (cleared: {_names([f'A row {r.row} {r.detail}' for r in cleared])})" if cleared else ""
        out.append(Finding(text=f"harmful-list rows {_ab(harm)}{named}"))
    changed = [c for c in q.counts if c.delta and c.flag != "harmful-list rows"]
    text = (
        "dataset quality A → B: " + "; ".join(f"{c.flag} {_g(c.a)} → {_g(c.b)}" for c in changed)
        if changed
        else "dataset quality: every other flag count is the same in A and B"
    )
    counts_only = " (counts only: no influence row hashes on both sides to match flagged rows by content)"
    out.append(Finding(text=text + (counts_only if q.matched_by == "none" else "")))
    return out


def _features(fc: FeatureCompare) -> list[Finding]:
    out = [
        Finding(severity="warn", text=f"SAE widths differ, features not matched: {', '.join(fc.width_differs)}")
        for _ in fc.width_differs[:1]
    ]
    for h in fc.hooks:
        largest = (
            f"; largest shift F{h.changes[0].feature} {h.changes[0].a:+.3g} → {h.changes[0].b:+.3g}"
            if h.changes
            else ""
        )
        out.append(
            Finding(
                text=f"SAE {h.hook}: {h.matched} feature(s) in both top lists, {len(h.new)} new to B's "
                f"({_names([_feature(f) for f in h.new]) or 'none'}), {len(h.dropped)} dropped from A's "
                f"({_names([_feature(f) for f in h.dropped]) or 'none'}); {h.crossed} moved between strengthen "
                f"and suppress{largest}"
            )
        )
    return out


def _delta(d: DeltaCompare) -> list[Finding]:
    out = []
    if d.newly_clipped:
        out.append(
            Finding(
                severity="warn",
                text=f"{len(d.newly_clipped)} tensor(s) clipped in B, not in A (their delta hit η·T·grad_clip): "
                f"{_names(d.newly_clipped)}",
            )
        )
    top = d.tensors[0] if d.tensors else None
    largest = (
        f"; largest change {top.name} {top.eta_eff_a:.3g} → {top.eta_eff_b:.3g}"
        + (f" (×{top.ratio:.3g})" if top.ratio is not None else "")
        if top is not None
        else ""
    )
    out.append(
        Finding(
            text=f"effective-LR map over {d.matched} tensor(s) (rules {d.rule_a} / {d.rule_b}): median η_eff B/A "
            f"{_g(d.median_ratio)}; clipped tensors {_ab(d.clipped)}{largest}"
        )
    )
    return out


def findings(res: CompareResult) -> list[Finding]:
    """Most severe first; among equals, harmful rows, flips, sharpness and dead modules before the rest."""
    out = []
    if res.same_file:
        out.append(Finding(severity="warn", text=f"A and B are the same simulation ({res.a.path}): every change is 0"))
    if res.influence is not None:
        out += _influence(res.influence)
    if res.sharpness is not None:
        out += _sharpness(res.sharpness, res.a, res.b)
    if res.landscape is not None:
        out += _landscape(res.landscape)
    if res.quality is not None:
        out += _quality(res.quality)
    if res.features is not None:
        out += _features(res.features)
    if res.delta is not None:
        out += _delta(res.delta)
    out += [Finding(text=f"not compared: {m}") for m in res.missing]
    return sorted(out, key=lambda f: SEVERITY_RANK[f.severity])


# ----- follow-ups ------------------------------------------------------------------------------------------


def _out_dir(side: Side) -> str:
    path = Path(side.path)
    return str(path.parent if path.name == RESULT else path)


def follow_ups(res: CompareResult) -> list[FollowUp]:
    out = []
    for name, side in (("A", res.a), ("B", res.b)):
        if "influence" not in side.sections:
            passes = [p for p in PASSES if p in {*side.passes, "2", "2b"}]
            out.append(
                FollowUp(
                    tool=SIMULATE.name,
                    args={"dataset": side.dataset, "passes": passes, "out": _out_dir(side)},
                    why=f"{name} has no influence scores: re-run it with pass 2b into its own directory (replacing "
                    "it), then compare again to match rows (and quality flags) by content",
                )
            )
    inf = res.influence
    if inf is not None and not inf.comparable and inf.a.test != inf.b.test and Path(inf.a.test).is_file():
        out.append(
            FollowUp(
                tool=SIMULATE.name,
                args={"dataset": res.b.dataset, "test": inf.a.test, "out": _out_dir(res.b)},
                why="the test sets differ: re-run B against A's test file so both sides' IF scores share one scale",
            )
        )
    sh = res.sharpness
    if sh is not None and sh.unstable.b and sh.lambda_max.b:
        out.append(
            FollowUp(
                tool=SIMULATE.name,
                args={"dataset": res.b.dataset, "lr": float(f"{1 / sh.lambda_max.b:.3g}")},
                why=f"B's λ_max {sh.lambda_max.b:.4g} is above 2/η: at lr 1/λ_max the limit 2/η is twice λ_max",
            )
        )
    if res.landscape is not None and res.landscape.dead_added:
        out.append(
            FollowUp(
                tool=SIMULATE.name,
                args={"dataset": res.b.dataset, "passes": ["2"], "max_len": res.b.max_len * 2},
                why="modules dead only in B: check whether longer sequences (or the rows removed) reach them",
            )
        )
    q = res.quality
    if q is not None and next(c for c in q.counts if c.flag == "harmful-list rows").b:
        out.append(
            FollowUp(
                tool=SIMULATE.name,
                args={"dataset": res.b.dataset, "passes": ["0"]},
                why="B still matches the harmful-content list: after removing those rows, re-run pass 0 to confirm",
            )
        )
    return out


# ----- card and table --------------------------------------------------------------------------------------


def slim(res: CompareResult) -> SimulationCompareCard:
    """The result with each list cut to CARD_ROWS (counts cover everything)."""
    n = CARD_ROWS

    def cut(model: M | None, *fields: str) -> M | None:
        return None if model is None else model.model_copy(update={f: getattr(model, f)[:n] for f in fields})

    features = res.features
    if features is not None:
        features = features.model_copy(update={"hooks": [cut(h, "changes", "new", "dropped") for h in features.hooks]})
    return SimulationCompareCard(
        a=res.a,
        b=res.b,
        same_file=res.same_file,
        missing=res.missing,
        influence=cut(res.influence, "changes", "flipped", "removed_rows", "added_rows"),
        features=features,
        delta=cut(res.delta, "tensors", "only_a", "only_b", "newly_clipped", "unclipped"),
        quality=cut(res.quality, "cleared", "introduced"),
        sharpness=res.sharpness,
        landscape=cut(res.landscape, "dead_added", "dead_removed"),
    )


def _side(label: str, s: Side) -> str:
    return (
        f"{label}  {s.name}: {s.rows} {s.format} rows from {s.dataset}; passes {', '.join(s.passes)}; lr {s.lr:g}, "
        f"T {s.steps} ({s.path})"
    )


def table(res: CompareResult) -> str:
    lines = ["compare simulations", _side("A", res.a), _side("B", res.b)]
    lines += [f"missing    {m}" for m in res.missing]
    inf = res.influence
    if inf is not None:
        lines += [
            f"influence  {inf.matched} matched, {inf.removed} only in A ({inf.removed_harmful} harmful), {inf.added} "
            f"only in B ({inf.added_harmful} harmful), flipped {inf.flipped_to_harmful} → harmful / "
            f"{inf.flipped_to_helpful} → helpful" + ("" if inf.comparable else "  [not directly comparable]"),
            f"           Σ IF {_ab(inf.total, True)}; mean {_ab(inf.mean, True)}; harmful {_ab(inf.harmful)}",
            f"           predicted removal {_ab(inf.predicted_removal)}; test loss {_ab(inf.test_loss)}",
        ]
        lines += [f"  only A   {_row(r)}{f'  {r.text}' if r.text else ''}" for r in inf.removed_rows[:NAMED]]
        lines += [f"  only B   {_row(r)}{f'  {r.text}' if r.text else ''}" for r in inf.added_rows[:NAMED]]
        lines += [f"  flipped  {_moved(c)} ({c.flipped})" for c in inf.flipped[:NAMED]]
        lines += [f"  Δ IF     {_moved(c)} (Δ {c.delta:+.3g})" for c in inf.changes[:NAMED]]
    sh = res.sharpness
    if sh is not None:
        lines.append(
            f"sharpness  λ_max {_ab(sh.lambda_max)}; λ_min {_ab(sh.lambda_min)}; 2/η {_g(sh.stability_limit.a)} / "
            f"{_g(sh.stability_limit.b)}; {', '.join(sh.changed) or 'no flag changed'}"
        )
    land = res.landscape
    if land is not None:
        lines.append(
            f"landscape  loss {_ab(land.loss_mean)}; max grad mean {_ab(land.max_grad_mean)}; dead {_ab(land.dead)}"
            + (f"; newly dead {', '.join(land.dead_added)}" if land.dead_added else "")
            + (f"; revived {', '.join(land.dead_removed)}" if land.dead_removed else "")
        )
    q = res.quality
    if q is not None:
        lines += [f"quality    {c.flag:<38} {_g(c.a):>8} → {_g(c.b):<8} Δ {_s(c.delta)}" for c in q.counts]
        lines += [f"  cleared  {r.flag} A row {r.row} (line {r.line}): {r.detail}" for r in q.cleared[:NAMED]]
        lines += [f"  new      {r.flag} B row {r.row} (line {r.line}): {r.detail}" for r in q.introduced[:NAMED]]
        if q.note:
            lines.append(f"  note     {q.note}")
    fc = res.features
    if fc is not None:
        for h in fc.hooks:
            lines.append(
                f"features   {h.hook}: {h.matched} matched, {len(h.new)} new, {len(h.dropped)} dropped, {h.crossed} "
                "crossed"
            )
            lines += [
                f"  F{c.feature:<7} {c.a:+.3g} → {c.b:+.3g} (Δ {c.delta:+.3g}){f'  {c.label}' if c.label else ''}"
                for c in h.changes[:NAMED]
            ]
        lines += [f"features   {w}: SAE widths differ" for w in fc.width_differs]
    d = res.delta
    if d is not None:
        lines.append(f"eff. LR    {d.matched} tensors, median η_eff B/A {_g(d.median_ratio)}, clipped {_ab(d.clipped)}")
        lines += [
            f"  {t.name}  η_eff {t.eta_eff_a:.3g} → {t.eta_eff_b:.3g}"
            + (f" (×{t.ratio:.3g})" if t.ratio is not None else "")
            + f", K {t.curvature_a:.3g} → {t.curvature_b:.3g}"
            + (f", clipped {'yes' if t.clipped_a else 'no'} → {'yes' if t.clipped_b else 'no'}")
            for t in d.tensors[:NAMED]
        ]
    return "\n".join(lines)
