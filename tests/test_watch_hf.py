"""TrainspectCallback inside a real transformers.Trainer on a tiny GPT-2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback
from watch_fixtures import sequences, tiny_lm, watch

from tools.watch import TrainspectCallback
from tools.weight_diff.compute import single_thread  # a model this small only loses time to a second thread


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = sequences(n)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


class PreClipNorms(TrainerCallback):
    """Each step's per-parameter grad norms as backward leaves them, before the Trainer clips: an
    independent record to check the callback's un-clipping against."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.steps: list[dict[str, float]] = []
        for name, p in model.named_parameters():  # a tied weight is listed (and hooked) once
            p.register_post_accumulate_grad_hook(
                lambda p, name=name: self.steps[-1].__setitem__(name, float(p.grad.norm()))
            )

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self.steps.append({})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, float]]]:
    from transformers import Trainer, TrainingArguments

    root = tmp_path_factory.mktemp("hf")
    model = tiny_lm()
    model.transformer.h[0].mlp.c_proj.register_forward_hook(lambda module, args, output: output.detach())
    pre_clip = PreClipNorms(model)
    args = TrainingArguments(
        output_dir=str(root / "out"),
        max_steps=40,
        logging_steps=1,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    with single_thread():
        Trainer(
            model=model,
            args=args,
            train_dataset=Rows(320),
            callbacks=[pre_clip, TrainspectCallback(path=root / "metrics.jsonl", run="hf-run")],
        ).train()
    return root / "metrics.jsonl", pre_clip.steps


def test_one_snapshot_per_logged_step_with_module_names(trained: tuple) -> None:
    rows = [json.loads(line) for line in trained[0].read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "transformer.wte"} <= set(rows[0]["gradNorms"])
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] > 0 and 0 < r["epoch"] for r in rows)


def test_norms_are_pre_clip(trained: tuple) -> None:
    path, pre_clip = trained
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(pre_clip) == len(rows) == 40
    assert sum(r["grad_norm_total"] > 1.0 for r in rows) >= 5, (
        "max_grad_norm=1.0 should clip a fresh model's first steps"
    )
    for row, params in zip(rows, pre_clip, strict=True):
        for module, logged in row["gradNorms"].items():
            own = [v for name, v in params.items() if name.rsplit(".", 1)[0] == module]
            assert logged == pytest.approx(math.sqrt(sum(v * v for v in own)), rel=1e-4, abs=1e-9), (
                row["step"],
                module,
            )
        assert row["maxGrad"] == pytest.approx(max(params.values()), rel=1e-4)


def test_blocked_layer_is_named_dead_by_the_watch(trained: tuple) -> None:
    rows = [json.loads(line) for line in trained[0].read_text().splitlines()]
    assert "transformer.h.0.mlp.c_proj" in rows[4]["deadLayers"]  # the callback's own streaks, from step 5
    result = watch(trained[0])
    dead = [s for s in result.signals if s.type == "dead_layers"]
    assert dead and dead[0].step == 5 and "transformer.h.0.mlp.c_proj" in dead[0].layers
    assert not [s for s in result.signals if s.severity == "critical"]
