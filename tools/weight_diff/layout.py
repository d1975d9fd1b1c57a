"""Where a normalised tensor name belongs in the report: a layer's Q/K/V/O/MLP matrix, an embedding,
a norm or bias vector, or another matrix outside the layers.

Matrix types: Q, K, V, O, "MLP in" (GPT-2 c_fc, Llama up_proj, BERT intermediate.dense), "MLP gate"
(Llama gate_proj, reported on its own because it gates rather than carries the MLP input), "MLP out",
"QKV" for fused projections whose head layout varies by model (left whole), "other" for the rest.
GPT-2's fused c_attn Conv1D (stored d_in × 3·d_out) is split by columns into Q, K and V.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Section = Literal["layer", "embedding", "norm", "bias", "other"]
MATRIX_ORDER = ("Q", "K", "V", "QKV", "O", "MLP gate", "MLP in", "MLP out", "other")

_LAYER = re.compile(r"^(?:.*\.)?(?:h|layers|layer|blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_MATRIX_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(rf"(?:^|\.)(?:{names})$"), kind)
    for names, kind in (
        ("qkv_proj|query_key_value|Wqkv|c_attn", "QKV"),
        ("q_proj|query|q_lin", "Q"),
        ("k_proj|key|k_lin", "K"),
        ("v_proj|value|v_lin", "V"),
        (r"o_proj|out_proj|attn\.c_proj|attention\.output\.dense|out_lin|self_attn\.dense", "O"),
        ("gate_proj", "MLP gate"),
        (r"c_fc|up_proj|fc1|intermediate\.dense|dense_h_to_4h|gate_up_proj|lin1", "MLP in"),
        (r"mlp\.c_proj|down_proj|fc2|output\.dense|dense_4h_to_h|lin2", "MLP out"),
    )
)
_EMBEDDING = re.compile(
    r"(?:^|\.)(?:wte|wpe|embed_tokens|embed_positions|word_embeddings|position_embeddings|"
    r"token_type_embeddings|lm_head|embed_in|embed_out|tok_embeddings)\.weight$"
)
_NORM = re.compile(r"(?:^|\.)(?:ln_\w*|\w*norm\w*|\w*LayerNorm\w*)\.(?:weight|bias)$", re.IGNORECASE)
_GPT2_FUSED_QKV = re.compile(r"(?:^|\.)attn\.c_attn$")


@dataclass(frozen=True)
class Part:
    """A matrix type and the column range of the stored tensor it occupies (None: the whole tensor)."""

    matrix: str
    cols: tuple[int, int] | None = None


@dataclass(frozen=True)
class Placement:
    section: Section
    layer: int | None = None
    parts: tuple[Part, ...] = ()


def place(key: str, shape: tuple[int, ...]) -> Placement:
    """Classify one normalised tensor name of the given stored shape."""
    if len(shape) < 2:
        if _NORM.search(key):
            return Placement("norm")
        return Placement("bias")
    if _EMBEDDING.search(key):
        return Placement("embedding")
    m = _LAYER.match(key)
    if m is None or m.group(3) != "weight":
        return Placement("other")
    module = m.group(2)
    matrix = next((kind for pattern, kind in _MATRIX_RULES if pattern.search(module)), "other")
    if matrix == "QKV" and _GPT2_FUSED_QKV.search(module) and len(shape) == 2 and shape[1] == 3 * shape[0]:
        width = shape[1] // 3
        parts = tuple(Part(name, (i * width, (i + 1) * width)) for i, name in enumerate(("Q", "K", "V")))
        return Placement("layer", int(m.group(1)), parts)
    return Placement("layer", int(m.group(1)), (Part(matrix),))
