"""The encoder path on a real model: the packaged all-MiniLM-L6-v2 against a copy given real contrastive steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from minilm_fixtures import minilm_copies
from safetensors.torch import load_file
from weight_fixtures import session_for

from session.context import ToolContext
from tools.weight_diff import SPEC
from toolserver.contract import SilentReporter


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    paths = minilm_copies(tmp_path_factory)
    return paths["base"], paths["contrastive"]


def test_encoder_layers_match_dense_svd(minilm: tuple[Path, Path]) -> None:
    base_dir, ft_dir = minilm
    result = SPEC.run(
        ToolContext(session_for(base_dir, kind="embedding")), SPEC.input_model(checkpoint=str(ft_dir)), SilentReporter()
    ).result
    base, ft = load_file(base_dir / "model.safetensors"), load_file(ft_dir / "model.safetensors")
    assert result.mode == "full" and result.n_layers == 6
    expected = {
        "Q": "attention.self.query",
        "K": "attention.self.key",
        "V": "attention.self.value",
        "O": "attention.output.dense",
        "MLP in": "intermediate.dense",
        "MLP out": "output.dense",
    }
    assert len(result.rows) == 36
    for row in result.rows:
        key = f"encoder.layer.{row.layer}.{expected[row.matrix]}.weight"
        assert row.keys == [key]
        delta, w = (ft[key] - base[key]).double(), base[key].double()
        sv = torch.linalg.svdvals(delta.float()).double()  # float32 LAPACK: ~1e-6 relative, and far faster here
        assert row.fro_delta == pytest.approx(float(delta.norm()), rel=1e-4)
        assert row.rel_delta == pytest.approx(float(delta.norm() / w.norm()), rel=1e-4)
        assert row.sigma_max == pytest.approx(float(sv[0]), rel=1e-4)
        assert row.stable_rank == pytest.approx(float(delta.norm() ** 2 / sv[0] ** 2), rel=1e-4)
    embeddings = {e.key: e for e in result.embeddings}
    assert set(embeddings) == {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
    }
    word = "embeddings.word_embeddings.weight"
    delta = (ft[word] - base[word]).double()
    assert embeddings[word].fro_delta == pytest.approx(float(delta.norm()), rel=1e-4)
    assert embeddings[word].stable_rank == pytest.approx(
        float(delta.norm() ** 2 / torch.linalg.svdvals(delta.float())[0] ** 2), rel=1e-4
    )
    norms = {n.key for n in result.norms}
    assert "encoder.layer.5.output.LayerNorm.weight" in norms and "encoder.layer.0.attention.self.query.bias" in norms
    assert not any("LayerNorm" in r.keys[0] for r in result.rows)
