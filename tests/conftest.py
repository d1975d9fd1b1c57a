"""Shared test set-up: every test gets its own TRAINSPECT_HOME, no mirror, and no hub access."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REALLOGS = SHARED / "reallogs"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "trainspect-home"
    monkeypatch.setenv("TRAINSPECT_HOME", str(home))
    monkeypatch.setenv("TRAINSPECT_MIRROR_URL", "")
    monkeypatch.delenv("TRAINSPECT_SESSION", raising=False)
    return home


@pytest.fixture
def reallogs() -> Path:
    if not REALLOGS.is_dir():
        pytest.skip("../shared/reallogs is not present")
    return REALLOGS


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2-style base with a real full fine-tune ({step, state_dict} .pt) and a real LoRA adapter."""
    from tools.fixtures.tiny_models import build_base, finetune, lora_finetune

    root = tmp_path_factory.mktemp("tiny-gpt2")
    base = build_base("gpt2", root / "base")
    return {
        "base": base,
        "full": finetune(base, root / "step_5.pt", steps=5, fmt="pt_step"),
        "lora": lora_finetune(base, root / "lora", steps=5),
    }
