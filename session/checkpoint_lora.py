"""PEFT LoRA adapters: the adapter_config.json fields that decide ΔW, and A/B pairs read lazily.

The effective update of a LoRA module is ΔW = scale · B @ A with scale = lora_alpha / r
(lora_alpha / sqrt(r) with rslora); rank_pattern / alpha_pattern override r / alpha per module,
matched the way peft matches them (peft.utils.other.get_pattern_key).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from session.checkpoint_keys import normalise_key
from toolserver.contract import ToolError, first_line, validation_problems

_LORA_PART = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))?$"
)
_PEFT_PREFIX = "base_model.model."


class AdapterConfig(BaseModel):
    """The adapter_config.json fields that decide ΔW; every other field peft writes is ignored."""

    model_config = ConfigDict(extra="ignore")

    peft_type: str = "LORA"
    r: int = 8
    lora_alpha: float = 8.0
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    target_modules: list[str] | str | None = None
    base_model_name_or_path: str | None = None

    @field_validator("rank_pattern", "alpha_pattern", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("use_rslora", "use_dora", "fan_in_fan_out", mode="before")
    @classmethod
    def _none_is_false(cls, v: Any) -> Any:
        return False if v is None else v

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """r and lora_alpha for one module (its name inside the base model), honouring the patterns."""
        if not (self.rank_pattern or self.alpha_pattern):
            return self.r, self.lora_alpha
        from peft.utils.other import get_pattern_key  # importing peft costs seconds: only when patterns are used

        r = self.rank_pattern.get(get_pattern_key(list(self.rank_pattern), module), self.r)
        alpha = self.alpha_pattern.get(get_pattern_key(list(self.alpha_pattern), module), self.lora_alpha)
        return r, alpha

    def scale(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def read_adapter_config(path: Path) -> AdapterConfig:
    """Parse adapter_config.json; only LoRA (not DoRA, IA3, LoHa, …) has ΔW = scale · B @ A."""
    try:
        cfg = AdapterConfig.model_validate(json.loads(path.read_text(encoding="utf-8-sig")))
    except ValidationError as e:
        raise ToolError(f"{path} is not a valid adapter config: {validation_problems(e)}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ToolError(f"{path} is not a readable adapter config: {first_line(e)}") from None
    if cfg.peft_type.upper() != "LORA":
        raise ToolError(f"{path}: peft_type {cfg.peft_type} is not supported", "only LoRA adapters have ΔW = scale·B@A")
    if cfg.use_dora:
        raise ToolError(
            f"{path}: DoRA adapters are not supported", "DoRA rescales W column-wise, so ΔW is not scale·B@A"
        )
    return cfg


@dataclass(frozen=True)
class LoraPair:
    """One adapted weight. ΔW, in the orientation the base stores the weight, is scale · left() @ right().

    Linear: left = B (d_out×r), right = A (r×d_in). GPT-2's Conv1D (peft's fan_in_fan_out) and embeddings
    store the weight transposed, so there left = Aᵀ and right = Bᵀ. The factors are read only when called.
    """

    target: str  # normalised key of the base weight this pair updates
    module: str  # module name inside the base model, as peft names it
    rank: int
    alpha: float
    scale: float
    embedding: bool
    transposed: bool
    _read_a: Callable[[], torch.Tensor]
    _read_b: Callable[[], torch.Tensor]
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of ΔW as the base stores the weight."""
        rows, cols = self.b_shape[0], self.a_shape[1]
        return (cols, rows) if self.transposed else (rows, cols)

    def left(self) -> torch.Tensor:
        return self._read_a().T if self.transposed else self._read_b()

    def right(self) -> torch.Tensor:
        return self._read_b().T if self.transposed else self._read_a()


def split_adapter_keys(raw_keys: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Group adapter tensor names into {module: {"A": key, "B": key, "embedding": ...}} and the rest.

    Accepts peft's saved names (`….lora_A.weight`) and in-memory names (`….lora_A.default.weight`).
    """
    modules: dict[str, dict[str, str]] = {}
    rest: list[str] = []
    adapters: set[str] = set()
    for key in raw_keys:
        m = _LORA_PART.match(key.removesuffix(".weight"))
        if "lora_magnitude_vector" in key:
            raise ToolError(f"adapter tensor {key} is a DoRA magnitude", "DoRA adapters are not supported")
        if not m:
            rest.append(key)
            continue
        if m["adapter"]:
            adapters.add(m["adapter"])
        part = m["part"]
        slot = modules.setdefault(m["module"], {})
        slot["A" if part.endswith("A") else "B"] = key
        if "embedding" in part:
            slot["embedding"] = "1"
    if len(adapters) > 1:
        raise ToolError(
            f"the adapter file holds several adapters ({', '.join(sorted(adapters))})", "save one adapter per directory"
        )
    return modules, rest


def module_name(raw_module: str) -> str:
    """The module's name inside the base model, as rank_pattern/alpha_pattern are matched against."""
    return raw_module.removeprefix(_PEFT_PREFIX)


def target_key(raw_module: str) -> str:
    return normalise_key(module_name(raw_module)) + ".weight"
