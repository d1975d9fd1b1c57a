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
