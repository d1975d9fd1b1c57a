"""Tiny real models shared by the checkpoint-loader and weight-diff tests (built once per test session)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from session.state import Session
from tools.fixtures.tiny_models import build_base, finetune, lora_finetune

FORMATS = {
    "safetensors": "ft.safetensors",
    "pt": "ft.bin",
    "pt_step": "step_5.pt",
    "hf_dir": "ft_dir",
    "hf_sharded": "ft_sharded",
}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per architecture: the base dir, one real 5-step fine-tune saved in every format, a LoRA and an rsLoRA adapter."""
    return _build(tmp_path_factory.getbasetemp() / "tiny-models")


@cache
def _build(root: Path) -> dict[str, dict[str, Path]]:
    """Built once per test session even though each test module that imports `tiny` gets its own fixture."""
    out: dict[str, dict[str, Path]] = {}
    for arch in ("gpt2", "llama", "bert"):
        base = build_base(arch, root / arch / "base")
        paths = {"base": base}
        for fmt, name in FORMATS.items():
            paths[fmt] = finetune(base, root / arch / name, steps=5, fmt=fmt)  # type: ignore[arg-type]
        paths["lora"] = lora_finetune(base, root / arch / "lora", steps=5)
        paths["rslora"] = lora_finetune(base, root / arch / "rslora", steps=5, r=8, alpha=4, use_rslora=True)
        out[arch] = paths
    return out


def session_for(model_dir: Path, kind: str = "llm") -> Session:
    return Session(id="test", model=str(model_dir), model_source=str(model_dir), kind=kind)  # type: ignore[arg-type]


def merged_delta(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """peft's own answer: merge_and_unload() weights minus the base weights, by HF parameter name."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if AutoConfig.from_pretrained(base_dir).model_type == "bert" else AutoModelForCausalLM
    base = auto.from_pretrained(base_dir, dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()
    return {k: merged[k] - before[k] for k in before if k in merged and not torch.equal(merged[k], before[k])}
