"""Helpers for the session tests: tiny real models, a real sae-lens SAE on disk, a fake HF cache."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from toolserver.tiny_models import build_base

D_MODEL = 64  # tiny_models' d_model
N_LAYERS = 2


def tiny_base(arch: str, root: Path) -> Path:
    return build_base(arch, root / f"tiny-{arch}")  # type: ignore[arg-type]


def build_sae(out_dir: Path, *, d_in: int = D_MODEL, d_sae: int = 128, hook: str | None = "blocks.1.hook_resid_post", seed: int = 0) -> Path:
    """A real sae-lens StandardSAE with non-zero biases (so the encoder formula is fully exercised), saved to disk."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    metadata = SAEMetadata(hook_name=hook, model_name="tiny") if hook else SAEMetadata(model_name="tiny")
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in) * 0.1)
    sae.save_model(out_dir)
    return out_dir


def fake_hub_cache(cache: Path, hf_id: str, model_dir: Path, commit: str = "0" * 40) -> Path:
    """Lay a model directory out the way huggingface_hub caches a download (refs/main → snapshots/<commit>)."""
    repo = cache / ("models--" + hf_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
