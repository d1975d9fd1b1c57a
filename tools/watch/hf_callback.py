"""The Hugging Face `transformers` emitter: `Trainer(..., callbacks=[TrainspectCallback(path=...)])`.

Gradients are read in `on_pre_optimizer_step`, after the Trainer has clipped them: the norm kernels
are queued there on the gradients' device and only copied to the host when the step is logged, so a
step that is not logged costs no host sync. Clipping scales every gradient by the same factor, so when
the step is logged the callback divides that factor back out using the pre-clip global norm the
Trainer logs as `grad_norm`: maxGrad and the per-module norms are pre-clip, as a spike detector needs.
A snapshot is written per logged step — use `logging_steps=1` for per-step signals; with a larger
interval the loss is the Trainer's interval mean and the grad norms those of the interval's last step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tools.watch.emitters import StepLogger
from tools.watch.engine import EngineConfig
from tools.watch.snapshot import ALIAS_KEYS, StepSnapshot


class TrainspectCallback(TrainerCallback):
    def __init__(
        self,
        path: str | Path | None = None,
        *,
        url: str | None = None,
        run: str | None = None,
        session: str | None = None,
        token: str | None = None,
        config: EngineConfig | None = None,
        append: bool = False,
    ) -> None:
        self._options: dict[str, Any] = dict(
            path=path, url=url, run=run, session=session, token=token, config=config, append=append
        )
        self.logger: StepLogger | None = None
        self._norms: torch.Tensor | None = None  # per-parameter norms of the last optimizer step, on its device

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero and self.logger is None:
            self.logger = StepLogger(model, **self._options)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.logger is not None and self.logger.meter is not None:
            self._norms = self.logger.meter.on_device()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.logger is None or not logs or "loss" not in logs:
            return  # eval and end-of-training logs carry no training loss
        meter = self.logger.meter
        grads = meter.to_host(self._norms)[0] if meter is not None and self._norms is not None else None
        norms, max_grad = (grads.modules, grads.max) if grads else (None, None)
        pre_clip = logs.get("grad_norm")
        if norms and max_grad is not None and isinstance(pre_clip, (int, float)) and math.isfinite(pre_clip):
            post_clip = math.sqrt(sum(v * v for v in norms.values()))
            if post_clip > 0 and pre_clip > post_clip * (1 + 1e-4):
                scale = pre_clip / post_clip
                norms = {k: v * scale for k, v in norms.items()}
                max_grad *= scale
        extra = {k: v for k, v in logs.items() if k not in ALIAS_KEYS and isinstance(v, (int, float))}
        if isinstance(pre_clip, (int, float)):
            extra["grad_norm_total"] = pre_clip
        self.logger.record(
            StepSnapshot(
                step=state.global_step,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                max_grad=max_grad,
                grad_norms=norms,
                epoch=logs.get("epoch", state.epoch),
                **extra,
            )
        )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
