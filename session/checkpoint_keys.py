"""Tensor names as every tool compares them: wrapper prefixes stripped, so a base directory and a
checkpoint saved from a differently wrapped model (DDP, torch.compile, PEFT, *ForCausalLM vs bare) line up.

The normal form is the bare backbone's HF naming: `h.0.attn.c_attn.weight` (GPT-2),
`layers.0.self_attn.q_proj.weight` (Llama), `encoder.layer.0.attention.self.query.weight` (BERT);
heads keep their own names (`lm_head.weight`, `cls.predictions.*`).
"""

from __future__ import annotations

# Leading wrappers, stripped repeatedly in any order: DDP, torch.compile, PEFT, then the HF backbone
# attribute of *ForCausalLM / *ForMaskedLM classes (GPT-2 `transformer.`, Llama `model.`, BERT `bert.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.", "transformer.", "model.", "bert.", "roberta.")

# Output embeddings that HF ties to the input embedding when config.tie_word_embeddings is true.
OUTPUT_EMBEDDINGS = ("lm_head.weight", "cls.predictions.decoder.weight", "embed_out.weight")
INPUT_EMBEDDINGS = (
    "wte.weight",
    "embed_tokens.weight",
    "embeddings.word_embeddings.weight",
    "embed_in.weight",
    "word_embeddings.weight",
    "tok_embeddings.weight",
)

# Aliases HF always ties, whatever the config says (output alias -> the name kept).
ALWAYS_TIED = {"cls.predictions.decoder.bias": "cls.predictions.bias"}


def normalise_key(key: str) -> str:
    """`module._orig_mod.transformer.h.0.attn.c_attn.weight` -> `h.0.attn.c_attn.weight`."""
    key = key.replace("._orig_mod.", ".")
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, stripped = key[len(prefix) :], True
    return key
