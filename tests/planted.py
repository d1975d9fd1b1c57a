"""Planted changes whose effect on activations is known exactly, and an SAE that reads them off exactly.

A fine-tune "checkpoint" that adds α·d to one layer's MLP output bias shifts that layer's resid_post by exactly
α·d at every position and leaves every earlier layer bit for bit unchanged. An SAE whose decoder rows are an
orthonormal basis Q, whose encoder is Qᵀ and whose encoder bias keeps every feature active is linear, so the
feature along d = Q[k] moves by exactly α and every other feature by nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tools.fixtures.tiny_models import build_base, build_tokenizer

D_MODEL = 64


def planted_base(arch: str, out: Path) -> Path:
    """A tiny base with an MLP output bias to plant into (GPT-2 has one; this Llama is built with mlp_bias)."""
    if arch == "gpt2":
        return build_base("gpt2", out)
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=D_MODEL,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        mlp_bias=True,
        tie_word_embeddings=False,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


def bias_key(arch: str, layer: int) -> str:
    return f"transformer.h.{layer}.mlp.c_proj.bias" if arch == "gpt2" else f"model.layers.{layer}.mlp.down_proj.bias"


def plant(base: Path, arch: str, layer: int, direction: torch.Tensor, alpha: float, out: Path) -> Path:
    """{step, state_dict} of the base with α·direction added to layer's MLP output bias."""
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(str(base)).state_dict()
    state[bias_key(arch, layer)] = state[bias_key(arch, layer)] + alpha * direction
    torch.save({"step": 1, "state_dict": state}, out)
    return out


def orthonormal_basis(seed: int = 0, d: int = D_MODEL) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()  # rows orthonormal


def linear_sae(out: Path, basis: torch.Tensor, hook: str, b_enc: float = 50.0) -> Path:
    """A sae-lens StandardSAE with decoder rows `basis`, encoder basisᵀ, every feature active (b_enc ≫ |x|)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae, d_in = basis.shape
    sae = StandardSAE(
        StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook, model_name="tiny"))
    )
    with torch.no_grad():
        sae.W_dec.copy_(basis)
        sae.W_enc.copy_(basis.T)
        sae.b_enc.fill_(b_enc)
        sae.b_dec.zero_()
    sae.save_model(out)
    return out
