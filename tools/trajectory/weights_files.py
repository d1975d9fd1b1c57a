"""What counts as saved weights in a run directory, without loading torch (the analysis viewer asks too):
`.pt`/`.pth`/`.bin`/`.safetensors` files that are not optimizer, scheduler or RNG state, and checkpoint
directories holding weights or a PEFT adapter."""

from __future__ import annotations

import re
from pathlib import Path

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
NOT_WEIGHTS = re.compile(r"^(?:optimizer|scheduler|scaler|training_args|rng_state[^.]*)\.(?:pt|pth|bin)$")
DIR_MARKERS = (
    "adapter_config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def is_checkpoint_dir(path: Path) -> bool:
    return any((path / m).is_file() for m in DIR_MARKERS)


def is_weights_file(path: Path) -> bool:
    return path.suffix.lower() in WEIGHT_SUFFIXES and not NOT_WEIGHTS.match(path.name)
