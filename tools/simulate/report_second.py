"""What people and agents read of the second-order passes: sharpness against 2/η, the most harmful rows, the
effective-LR map and the synthetic checkpoint, as findings, follow-ups, table lines and the card's slices."""

from __future__ import annotations

from tools.simulate.models import DeltaReport, InfluenceReport, Sharpness, SimulateInput, SimulationResult
from toolserver.contract import Finding, FollowUp


def sharpness_findings(s: Sharpness) -> list[Finding]:
    bound = "" if s.converged else f" (Lanczos unconverged after {s.iterations} HVPs: a lower bound)"
    low = f", λ_min {s.lambda_min:.4g}" if s.lambda_min is not None else ""
    head = f"sharpness over {s.params:,} parameters on {s.hessian_rows} rows: λ_max {s.lambda_max:.4g}{bound}{low}"
    out = []
    if s.unstable:
        out.append(
            Finding(
                severity="warn",
                text=f"{head} > 2/η = {s.stability_limit:.4g}: gradient descent at lr {s.lr:g} is unstable along the "
                f"sharpest direction; below lr {2 / s.lambda_max:.3g} it is not",
            )
        )
    else:
        out.append(Finding(text=f"{head}, below 2/η = {s.stability_limit:.4g} (lr {s.lr:g} is stable there)"))
    if s.ntk_unreliable:
        out.append(
            Finding(
                severity="warn",
                text=f"λ_max {s.lambda_max:.4g} > 10: the seed's label for NTK-linearised predictions (pass 3) least "
                "reliable",
            )
        )
    return out


def influence_findings(inf: InfluenceReport) -> list[Finding]:
    lissa = inf.lissa
    out = []
    if inf.most_harmful:
        them = f"all {inf.harmful}" if inf.harmful > 1 else "it"
        shown = "; ".join(f"row {r.row} (line {r.line}, IF {r.score:+.3g}): {r.text!r}" for r in inf.most_harmful[:3])
        out.append(
            Finding(
                severity="warn",
                text=f"{inf.harmful} of {inf.train_rows} rows raise the test loss (IF > 0 = harmful); the most "
                f"harmful: {shown}; removing {them} is predicted to lower the test loss by "
                f"{inf.predicted_removal:.3g} (test loss {inf.test_loss:.4g})",
            )
        )
    else:
        out.append(Finding(text=f"no row of {inf.train_rows} raises the test loss (every IF ≤ 0)"))
    out.append(
        Finding(
            text=f"influence: LiSSA converged in {lissa.iterations} of {lissa.budget} HVPs to residual "
            f"{lissa.residual:.2e} (tol {lissa.tol:g}; error bound {lissa.error_bound:.2e}), s {lissa.scale:.4g}, λ "
            f"{lissa.damping:.4g}, so (H + {lissa.effective_damping:.4g}·I)⁻¹ over {inf.params:,} parameters; test "
            f"gradient from {inf.test}"
        )
    )
    return out


def delta_findings(d: DeltaReport, measured: bool) -> list[Finding]:
    top = max(d.tensors, key=lambda t: t.relative or 0.0)
    negative = [t.name for t in d.tensors if t.curvature < 0]
    out = [
        Finding(
            text=f"pass 3 ({d.rule} rule, {d.steps} SGD steps at lr {d.lr:g}): the largest predicted change is "
            f"{top.name}, ‖Δ‖/‖W‖ = {top.relative or 0:.3g} (η_eff {top.eta_eff:.3g}, K {top.curvature:.3g}); "
            f"{len(d.clipped)} of {len(d.tensors)} tensors clipped at η·T·clip = {d.clip_limit:.3g}"
            + (f"; {len(negative)} with negative curvature along their gradient" if negative else "")
            + ("" if measured else "; λ_max not measured (sharpness: true checks 2/η and the NTK label)")
        )
    ]
    c = d.checkpoint
    if c is not None:
        diffs = ", ".join(
            f"{x.hook}: {x.changed} of {x.features} features changed, mean |Δ| {x.mean_abs_delta:.3g}"
            for x in c.sae_diff
        )
        out.append(
            Finding(
                text=f"synthetic checkpoint {c.path} ({c.format}): reloaded through the loader, all {c.matched} "
                "parameters equal to what was written"
                + (f"; sae diff on {c.sae_diff_texts} dataset texts: {diffs}" if diffs else "")
            )
        )
    return out


def findings(result: SimulationResult) -> list[Finding]:
    out = []
    if result.sharpness is not None:
        out += sharpness_findings(result.sharpness)
    if result.influence is not None:
        out += influence_findings(result.influence)
    if result.delta is not None:
        out += delta_findings(result.delta, result.sharpness is not None)
    return out


def follow_ups(result: SimulationResult, args: SimulateInput) -> list[FollowUp]:
    out = []
    s = result.sharpness
    if s is not None and s.unstable:
        out.append(
            FollowUp(
                tool="run_simulation",
                args={
                    "dataset": result.dataset,
                    "passes": ["2", "3"],
                    "lr": float(f"{1.0 / s.lambda_max:.3g}"),
                    **({"out": args.out} if args.out else {}),
                },
                why="λ_max exceeds 2/η: simulate at lr 1/λ_max, half the stability limit",
            )
        )
    c = result.delta.checkpoint if result.delta is not None else None
    if c is not None:
        out += [
            FollowUp(
                tool="run_weight_diff", args={"checkpoint": c.path}, why="where the predicted delta lands, per matrix"
            ),
            FollowUp(
                tool="run_model_diff", args={"checkpoint": c.path}, why="what the predicted fine-tune would answer"
            ),
        ]
    return out


def table_lines(result: SimulationResult) -> list[str]:
    lines = []
    s = result.sharpness
    if s is not None:
        low = f", λ_min {s.lambda_min:.4g}" if s.lambda_min is not None else ""
        lines.append(
            f"sharpness  λ_max {s.lambda_max:.4g}{low} ({'converged' if s.converged else 'UNCONVERGED'}, "
            f"{s.iterations} HVPs), 2/η {s.stability_limit:.4g}{' UNSTABLE' if s.unstable else ''}"
            f"{', NTK unreliable (λ_max > 10)' if s.ntk_unreliable else ''}"
        )
    inf = result.influence
    if inf is not None:
        lines.append(
            f"influence  {inf.harmful} of {inf.train_rows} rows harmful; LiSSA {inf.lissa.iterations} HVPs, residual "
            f"{inf.lissa.residual:.2e}, s {inf.lissa.scale:.4g}, λ {inf.lissa.damping:.4g}"
        )
        lines += [f"harmful    row {r.row} line {r.line} IF {r.score:+.4g}: {r.text}" for r in inf.most_harmful[:5]]
        lines += [f"helpful    row {r.row} line {r.line} IF {r.score:+.4g}: {r.text}" for r in inf.most_helpful[:3]]
    d = result.delta
    if d is not None:
        lines.append(f"delta      {d.rule} rule, {len(d.clipped)} clipped (limit {d.clip_limit:.3g})")
        for t in sorted(d.tensors, key=lambda t: -(t.relative or 0.0))[:8]:
            rel = "—" if t.relative is None else f"{t.relative:.3g}"
            lines.append(
                f"  {t.name:<44} η_eff {t.eta_eff:.3g}  K {t.curvature:+.3g}  ‖Δ‖/‖W‖ {rel}"
                + ("  clipped" if t.clipped else "")
            )
        if d.checkpoint is not None:
            lines.append(f"checkpoint {d.checkpoint.path} ({d.checkpoint.matched} tensors reloaded equal)")
            lines += [
                f"sae diff   {x.hook}: {x.changed} of {x.features} changed, mean |Δ| {x.mean_abs_delta:.3g}"
                for x in d.checkpoint.sae_diff
            ]
    return lines


def slim_influence(inf: InfluenceReport | None) -> InfluenceReport | None:
    """The card's influence: the ranked lists, without every row's score (those page through get_result)."""
    return inf.model_copy(update={"scores": []}) if inf is not None else None
