"""Training an SAE with sae-lens' own trainer on activations the model runtime collects.

Activations of one hook are collected once (LLMs: every real token after each text's first; encoders: each text's
pooled hidden state) and a tenth is held out. sae-lens' SAETrainer trains a TopK SAE on shuffled batches of the
rest; the held-out part gives the FVU, L0 and dead-feature count reported. The saved directory is sae-lens'
inference format, with metadata that says how its activations were read (hook, raw weights, no BOS added).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from unittest.mock import patch

import torch
from tqdm.auto import tqdm

HELD_OUT = 0.1
# steps: `epochs` passes over the training activations, within [min_steps, max_steps]
MODES = {
    "quick": {"epochs": 50, "min_steps": 300, "max_steps": 2_000, "activations": 40_000, "width": 8},
    "full": {"epochs": 200, "min_steps": 3_000, "max_steps": 20_000, "activations": 400_000, "width": 16},
}


def steps_for(mode: dict[str, int], n_train: int) -> int:
    per_epoch = -(-n_train // min(BATCH, n_train))
    return min(mode["max_steps"], max(mode["min_steps"], mode["epochs"] * per_epoch))


BATCH = 256
LR = 4e-4


@dataclass
class Trained:
    sae: Any  # the training SAE (sae-lens TopKTrainingSAE)
    losses: list[tuple[int, float]]
    steps: int
    batch: int
    held_out: torch.Tensor  # activations kept out of training, for the evaluation


def batches(train: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches over the training activations (a fresh permutation each pass)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(train.shape[0], generator=gen)
        for start in range(0, train.shape[0] - batch + 1, batch):
            yield train[order[start : start + batch]]


def train_topk(
    acts: torch.Tensor, *, d_sae: int, k: int, steps: int, seed: int, device: str, on_step: Callable[[int, float], None]
) -> Trained:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(seed)
    order = torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, int(acts.shape[0] * HELD_OUT))
    held, train = acts[order[:n_eval]], acts[order[n_eval:]]
    batch = min(BATCH, train.shape[0])
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k, device=device))
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=LR,
        lr_end=LR,
        lr_warm_up_steps=min(100, steps // 10),
        device=device,
        dead_feature_window=max(1, steps // 4),
        feature_sampling_window=max(1, steps // 4),
        logger=LoggingConfig(log_to_wandb=False),
    )
    losses: list[tuple[int, float]] = []
    every = max(1, steps // 100)

    class Reporting(SAETrainer):  # type: ignore[misc]
        def step(self, batch: torch.Tensor) -> Any:
            out = super().step(batch)
            if self.n_training_steps % every == 0 or self.n_training_steps == steps - 1:
                mse = (out.losses["mse_loss"] if "mse_loss" in out.losses else out.loss).detach().item()
                losses.append((self.n_training_steps, mse))
                on_step(self.n_training_steps, mse)
            return out

    # progress goes to the reporter; sae-lens' own tqdm bar would write over the CLI's
    with patch("sae_lens.training.sae_trainer.tqdm", partial(tqdm, disable=True)):
        Reporting(cfg, sae, batches(train.to(device), batch, seed)).fit()
    return Trained(sae, losses, steps, batch, held)


def evaluate(sae: Any, x: torch.Tensor) -> tuple[float, float, int]:
    """Held-out fraction of variance unexplained, mean active features, features that never fire."""
    with torch.no_grad():
        feats = sae.encode(x)
        recon = sae.decode(feats)
    x64, r64 = x.double(), recon.double()
    total = float((x64 - x64.mean(0)).square().sum())
    fvu = float((x64 - r64).square().sum()) / total if total > 0 else math.inf
    active = feats > 0
    return fvu, float(active.sum(1).double().mean()), int((~active.any(0)).sum())
