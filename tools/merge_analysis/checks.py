"""The gate's checks as pure functions of what was measured: each returns a Check with its value and thresholds.

Every check's status is `fail` when value ≥ fail_at, else `warn` when value ≥ warn_at, else `pass`; a check
that could not run is `skipped` with the reason, and does not count towards the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tools.merge_analysis.models import (
    COLLAPSE_MIN_RANK,
    Behaviour,
    Check,
    CheckName,
    Fidelity,
    FlaggedMatrix,
    MergeInput,
    Status,
    Verdict,
)
from tools.weight_diff.compute import Measured
from tools.weight_diff.models import NonFiniteTensor

SEVERITY: dict[Status, int] = {"skipped": -1, "pass": 0, "warn": 1, "fail": 2}


def status(value: float, warn_at: float | None, fail_at: float | None) -> Status:
    if fail_at is not None and value >= fail_at:
        return "fail"
    if warn_at is not None and value >= warn_at:
        return "warn"
    return "pass"


def check(
    name: CheckName, value: float, warn_at: float | None, fail_at: float | None, why: str, items: Sequence[str] = ()
) -> Check:
    return Check(
        name=name,
        status=status(value, warn_at, fail_at),
        value=value,
        warn_at=warn_at,
        fail_at=fail_at,
        why=why,
        items=list(items),
    )


def skipped(name: CheckName, why: str) -> Check:
    return Check(name=name, status="skipped", value=None, warn_at=None, fail_at=None, why=why)


def verdict(checks: Sequence[Check]) -> Verdict:
    worst = max((c.status for c in checks), key=SEVERITY.__getitem__, default="pass")
    return "pass" if worst == "skipped" else worst  # type: ignore[return-value]


def label(m: Measured) -> str:
    return f"layer {m.layer} {m.matrix}" if m.layer is not None and m.matrix else m.key


def adapted_matrices(measured: Sequence[Measured], mode: str) -> list[Measured]:
    """LoRA: every adapted matrix (zero updates included); full: every matrix the checkpoint changed."""
    matrices = [m for m in measured if m.spectrum is not None and len(m.shape) == 2]
    return [m for m in matrices if m.lora_rank is not None] if mode == "lora" else [m for m in matrices if m.fro > 0]


def no_op(mode: str, measured: Sequence[Measured], missing_targets: Sequence[str], compared: int) -> Check:
    if mode == "lora":
        by_key: dict[str, bool] = {}
        for m in measured:
            if m.lora_rank is not None:
                by_key[m.key] = by_key.get(m.key, True) and m.fro == 0
        dead = [k for k, zero in by_key.items() if zero] + [f"{k} (not in the base)" for k in missing_targets]
        total = len(by_key) + len(missing_targets)
        why = (
            f"{len(dead)} of {total} adapted modules would change nothing when merged (B·A = 0, or a target the "
            "base lacks)"
            if dead
            else f"all {total} adapted modules change their weight"
        )
        return check("no_op", float(len(dead)), 1.0, float(max(total, 1)), why, dead)
    unchanged = sorted({m.key for m in measured} - {m.key for m in measured if m.fro > 0})
    why = f"{len(unchanged)} of {compared} compared tensors are identical to the base" + (
        " — the checkpoint changes nothing" if len(unchanged) >= compared else ""
    )
    return check("no_op", float(len(unchanged)), None, float(max(compared, 1)), why, unchanged[:50])


def non_finite(factors: Sequence[NonFiniteTensor], merged: Sequence[str] | None, save_dtype: str | None) -> Check:
    named = [f"{t.key} ({t.checkpoint} of {t.numel} values)" for t in factors if t.checkpoint or t.note]
    named += [f"{k} (merged, {save_dtype})" for k in merged or ()]
    scope = "the adapter's factors and scales" if merged is None else f"the factors and the merged {save_dtype} tensors"
    why = f"NaN or inf in {len(named)} tensors of {scope}" if named else f"no NaN or inf in {scope}"
    return check("non_finite", float(len(named)), None, 1.0, why, named)


def rank(matrices: Sequence[Measured], args: MergeInput) -> tuple[Check, list[FlaggedMatrix]]:
    rels = [(m.rel, m) for m in matrices if m.rel is not None]
    if not rels:
        return skipped("rank", "no adapted matrix with a non-zero base weight"), []
    big = sorted((x for x in rels if x[0] >= args.rel_warn), key=lambda x: -x[0])
    flagged = [_flag(m, "dwarfs weight" if rel >= args.rel_fail else "large update") for rel, m in big]
    top, top_m = max(rels, key=lambda x: x[0])
    why = (
        f"{len(big)} of {len(rels)} matrices have ‖ΔW‖/‖W‖ ≥ {args.rel_warn:g}; largest {top:.3g} at {label(top_m)}"
        if big
        else f"largest ‖ΔW‖/‖W‖ {top:.3g} ({label(top_m)}), below {args.rel_warn:g}"
    )
    return check("rank", top, args.rel_warn, args.rel_fail, why, [f.label for f in flagged]), flagged


def collapse(matrices: Sequence[Measured], args: MergeInput) -> tuple[Check, list[FlaggedMatrix]]:
    eligible = [m for m in matrices if m.fro > 0 and (_allowed(m) or 0) >= COLLAPSE_MIN_RANK]
    if not eligible:
        return skipped("collapse", f"no changed matrix whose allowed rank is ≥ {COLLAPSE_MIN_RANK}"), []
    collapsed = [m for m in eligible if (m.spectrum.stable_rank or math.inf) < args.collapse_rank]  # type: ignore[union-attr]
    share = len(collapsed) / len(eligible)
    why = (
        f"{len(collapsed)} of {len(eligible)} updates (allowed rank ≥ {COLLAPSE_MIN_RANK}) have stable rank < "
        f"{args.collapse_rank:g}: " + ("collapsed onto one direction" if share >= args.collapse_share else "not most")
    )
    flagged = [_flag(m, "collapsed") for m in collapsed] if share >= args.collapse_share else []
    return check("collapse", share, args.collapse_share, None, why, [f.label for f in flagged]), flagged


def vocab_tying(mismatched: Sequence[str], tie_problems: Sequence[str]) -> Check:
    items = [*mismatched, *tie_problems]
    why = (
        f"{len(mismatched)} embedding or head tensors with another vocabulary size than the base, "
        f"{len(tie_problems)} that would break the base's tied embeddings"
        if items
        else "embedding and head shapes match the base; tied embeddings stay tied"
    )
    return check("vocab_tying", float(len(items)), None, 1.0, why, items)


def fidelity(f: Fidelity | None, reason: str | None, args: MergeInput) -> Check:
    if f is None:
        return skipped("fidelity", reason or "not run")
    if f.share_of_effect is None:
        why = (
            f"the adapter changes no output; merged vs unmerged max |Δ| {f.max_abs:.3g} "
            f"({f.max_rel_scale:.2g} of the output scale)"
        )
        return check("fidelity", f.max_rel_scale, args.fidelity_warn, args.fidelity_fail, why)
    why = (
        f"merged ({f.save_dtype}) vs unmerged {f.output}: mean |Δ| {f.mean_abs:.3g} = {f.share_of_effect:.3g} of the "
        f"adapter's own effect {f.effect_mean_abs:.3g}; max |Δ| {f.max_abs:.3g} ({f.max_rel_scale:.2g} of the "
        f"output scale {f.scale:.3g}) over {f.positions} positions"
    )
    return check("fidelity", f.share_of_effect, args.fidelity_warn, args.fidelity_fail, why)


def degenerate(b: Behaviour | None, reason: str | None, args: MergeInput) -> Check:
    if b is None:
        return skipped("degenerate", reason or "not run")
    rise = max(0.0, b.merged_degenerate - b.base_degenerate)
    why = (
        f"empty or degenerate generations (≥ {args.repeat_rate:g} of 3-grams repeated, or no text): merged "
        f"{b.merged_degenerate:.0%} vs base {b.base_degenerate:.0%}; mean repeat rate {b.mean_repeat_rate:.2f}"
    )
    items = [g.prompt for g in b.generations if g.merged_degenerate and not g.base_degenerate]
    return check("degenerate", rise, args.degenerate_warn, args.degenerate_fail, why, items[:10])


def next_token_kl(b: Behaviour | None, reason: str | None, args: MergeInput) -> Check:
    if b is None:
        return skipped("next_token_kl", reason or "not run")
    value = b.kl_mean if math.isfinite(b.kl_mean) else math.inf
    why = f"mean next-token KL(base ‖ merged) over probe positions {b.kl_mean:.3g} nats (max {b.kl_max:.3g})"
    return check("next_token_kl", value, args.kl_warn, args.kl_fail, why)


def _allowed(m: Measured) -> int | None:
    return m.lora_rank if m.lora_rank is not None else min(m.shape)


def _flag(m: Measured, reason: str) -> FlaggedMatrix:
    return FlaggedMatrix(
        label=label(m),
        key=m.key,
        rel_delta=m.rel,
        stable_rank=m.spectrum.stable_rank if m.spectrum else None,
        allowed_rank=_allowed(m),
        reason=reason,  # type: ignore[arg-type]
    )
