"""TrainspectCallback inside a real transformers.Trainer on a tiny GPT-2."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from watch_fixtures import one_thread, sequences, tiny_lm, watch

from tools.watch import TrainspectCallback


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = sequences(n)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Trainer, TrainingArguments

    root = tmp_path_factory.mktemp("hf")
    model = tiny_lm()
    model.transformer.h[0].mlp.c_proj.register_forward_hook(lambda module, args, output: output.detach())
    args = TrainingArguments(output_dir=str(root / "out"), max_steps=40, logging_steps=1, per_device_train_batch_size=8,
                             learning_rate=3e-3, max_grad_norm=1.0, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0)
    with one_thread():
        Trainer(model=model, args=args, train_dataset=Rows(320),
                callbacks=[TrainspectCallback(path=root / "metrics.jsonl", run="hf-run")]).train()
    return root / "metrics.jsonl"


def test_one_snapshot_per_logged_step_with_module_names(trained: Path) -> None:
    rows = [json.loads(line) for line in trained.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "transformer.wte"} <= set(rows[0]["gradNorms"])
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] > 0 and 0 < r["epoch"] for r in rows)


def test_norms_are_pre_clip(trained: Path) -> None:
    rows = [json.loads(line) for line in trained.read_text().splitlines()]
    clipped = [r for r in rows if r["grad_norm_total"] > 1.0]
    assert clipped, "max_grad_norm=1.0 should clip the first steps of a fresh model"
    for r in rows:
        total = math.sqrt(sum(v * v for v in r["gradNorms"].values()))
        # the per-module norms cover exactly the parameters the Trainer clips, before clipping
        assert total == pytest.approx(r["grad_norm_total"], rel=1e-3)
        assert r["maxGrad"] <= total * (1 + 1e-6)


def test_blocked_layer_is_named_dead_by_the_watch(trained: Path) -> None:
    rows = [json.loads(line) for line in trained.read_text().splitlines()]
    assert "transformer.h.0.mlp.c_proj" in rows[4]["deadLayers"]  # the callback's own streaks, from step 5
    result = watch(trained)
    dead = [s for s in result.signals if s.type == "dead_layers"]
    assert dead and dead[0].step == 5 and "transformer.h.0.mlp.c_proj" in dead[0].layers
    assert not [s for s in result.signals if s.severity == "critical"]
