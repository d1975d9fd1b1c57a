"""Helpers for the session tests: tiny real models, a real sae-lens SAE on disk, a fake HF cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tools.fixtures.tiny_models import build_base

D_MODEL = 64  # tiny_models' d_model
N_LAYERS = 2


def tiny_base(arch: str, factory: pytest.TempPathFactory) -> Path:
    """A tiny base model, built once per test run and shared by every session test module (read-only)."""
    path = factory.getbasetemp() / "session-bases" / f"tiny-{arch}"
    return path if (path / "config.json").is_file() else build_base(arch, path)  # type: ignore[arg-type]


def build_sae(
    out_dir: Path,
    *,
    d_in: int = D_MODEL,
    d_sae: int = 128,
    hook: str | None = "blocks.1.hook_resid_post",
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """A real sae-lens StandardSAE with non-zero biases (so the encoder formula is fully exercised), saved to disk."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta: dict[str, Any] = {"model_name": "tiny"}
    if hook:
        meta["hook_name"] = hook
    if model_kwargs is not None:
        meta["model_from_pretrained_kwargs"] = model_kwargs
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(**meta)))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in) * 0.1)
    sae.save_model(out_dir)
    return out_dir


def fake_hub_cache(cache: Path, repo_id: str, files_dir: Path, subfolder: str = "", commit: str = "0" * 40) -> Path:
    """Lay a directory out the way huggingface_hub caches a download (refs/main → snapshots/<commit>[/subfolder])."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_dir, snapshot / subfolder if subfolder else snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
