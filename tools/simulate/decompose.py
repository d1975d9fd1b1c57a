"""The SAE gradient decomposition: which features would training push, and which way.

For feature f with decoder direction W_dec[f] and baseline activation a_f (pass 1),
    score_f = −⟨g, W_dec[f]⟩ · a_f,
g the gradient of the training loss with respect to the residual stream at the SAE's hook (pass 2). Gradient
descent moves the residual along −g, so a positive score is a feature predicted to strengthen and a negative
one to suppress; a feature the data never activates (a_f = 0) scores 0 however well its direction aligns. The
seed writes the product without the minus sign, which reports every direction backwards (tests pin both).
"""

from __future__ import annotations

import torch

from tools.simulate.models import FeatureScore, FeatureShift, SaePrediction


def scores(resid_grad: torch.Tensor, w_dec: torch.Tensor, base_acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, alignment) per feature, float64; alignment = −⟨g, W_dec[f]⟩."""
    alignment = -(w_dec.double() @ resid_grad.double())
    return alignment * base_acts.double(), alignment


def predict(
    hook: str,
    layer: int,
    resid_grad: torch.Tensor,
    w_dec: torch.Tensor,
    base_acts: torch.Tensor,
    tokens: int,
    labels: dict[int, str],
    top: int,
) -> SaePrediction:
    score, alignment = scores(resid_grad, w_dec, base_acts)

    def row(f: int) -> FeatureScore:
        return FeatureScore(
            feature=f,
            score=float(score[f]),
            alignment=float(alignment[f]),
            base_act=float(base_acts[f]),
            label=labels.get(f),
        )

    order = torch.argsort(score, descending=True).tolist()
    up = [f for f in order[:top] if score[f] > 0]
    down = [f for f in reversed(order[-top:]) if score[f] < 0]
    return SaePrediction(
        hook=hook,
        layer=layer,
        d_sae=w_dec.shape[0],
        tokens=tokens,
        active_features=int((base_acts > 0).sum()),
        resid_grad_norm=float(resid_grad.double().norm()),
        strengthen=[row(f) for f in up],
        suppress=[row(f) for f in down],
    )


def feature_shifts(preference: torch.Tensor, sft: torch.Tensor, labels: dict[int, str], top: int) -> list[FeatureShift]:
    """Features the preference objective pushes most differently from SFT on the chosen responses: each score
    vector divided by its largest |score| (the two losses have different scales), then the largest |difference|."""
    p = preference / preference.abs().max().clamp_min(1e-300)
    s = sft / sft.abs().max().clamp_min(1e-300)
    shift = p - s
    order = torch.argsort(shift.abs(), descending=True)[:top].tolist()
    return [
        FeatureShift(feature=f, preference=float(p[f]), sft=float(s[f]), shift=float(shift[f]), label=labels.get(f))
        for f in order
        if shift[f] != 0
    ]
