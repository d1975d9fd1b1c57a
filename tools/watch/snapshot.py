"""The step event (one training step, flat) and the signal the engine raises from it.

Field names on the wire are the design's (`step`, `loss`, `learning_rate`, `maxGrad`, `gradNorms`,
`deadLayers`, `epoch`); Python code uses snake_case attributes. Readers accept the spellings real
trainers write (`lr`, `grad_norm`, `current_steps`, `train/loss`, snake_case aliases) and keep every
unknown key, so nothing a training script logged is lost on a round trip.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from toolserver.contract import SEVERITY_RANK, LiveFamily, Severity

# the live events of a training run (StepLogger, the HF callback, `watch --follow`) and of its card
WATCH_EVENTS = LiveFamily(prefix="training.watch", card="watch", fields=("step", "loss", "maxGrad", "learning_rate"))

SignalType = Literal[
    "loss_nonfinite",
    "grad_nonfinite",
    "loss_spike",
    "loss_diverging",
    "gradient_spike",
    "attention_head_dead",
    "dead_layers",
    "loss_plateau",
]
# Engine priority order: non-finite numbers first, then a loss jump, then the design's five detectors.
SIGNAL_TYPES: tuple[str, ...] = SignalType.__args__  # type: ignore[attr-defined]
SEED_TYPES = frozenset({"loss_diverging", "gradient_spike", "attention_head_dead", "dead_layers", "loss_plateau"})
EPISODE_TYPES = frozenset({"attention_head_dead", "dead_layers", "loss_plateau"})  # conditions that persist


class StepSnapshot(BaseModel):
    """One step event. `maxGrad` is the largest per-parameter gradient norm (from Hugging Face logs: the
    global grad norm, the only aggregate they record); `gradNorms` maps a module name to its grad norm."""

    # JSONL keeps NaN/Infinity as the tokens real trainers write (and every reader here accepts)
    model_config = ConfigDict(extra="allow", populate_by_name=True, ser_json_inf_nan="constants")

    step: int = Field(
        validation_alias=AliasChoices("step", "current_steps", "global_step", "train/global_step", "_step")
    )
    loss: float = Field(validation_alias=AliasChoices("loss", "train/loss", "train_loss_step", "train_loss"))
    learning_rate: float | None = Field(
        None, validation_alias=AliasChoices("learning_rate", "lr", "train/learning_rate", "learningRate")
    )
    max_grad: float | None = Field(
        None,
        serialization_alias="maxGrad",
        validation_alias=AliasChoices("maxGrad", "max_grad", "max_grad_norm", "grad_norm", "train/grad_norm"),
    )
    grad_norms: dict[str, float] | None = Field(
        None, serialization_alias="gradNorms", validation_alias=AliasChoices("gradNorms", "grad_norms")
    )
    dead_layers: list[str] | None = Field(
        None, serialization_alias="deadLayers", validation_alias=AliasChoices("deadLayers", "dead_layers")
    )
    epoch: float | None = None

    @field_validator("loss", "max_grad", "learning_rate")
    @classmethod
    def _no_negative_zero(cls, v: float | None) -> float | None:
        return v + 0.0 if v is not None else None  # -0.0 → 0.0, so it never prints as "-0"

    def wire(self) -> dict[str, Any]:
        """The design's flat JSON shape (camelCase names, unset optional fields left out, unknown keys kept)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _spellings(name: str) -> frozenset[str]:
    alias = StepSnapshot.model_fields[name].validation_alias
    return frozenset(alias.choices) if isinstance(alias, AliasChoices) else frozenset({name})  # type: ignore[arg-type]


LOSS_KEYS = _spellings("loss")
ALIAS_KEYS = frozenset(StepSnapshot.model_fields).union(*map(_spellings, StepSnapshot.model_fields))  # every known key


class Signal(BaseModel):
    """A detector that fired: what, how bad, when, on which metric and value, against which threshold."""

    type: SignalType
    severity: Severity
    step: int
    metric: str = Field(description="the quantity the detector tested, e.g. maxGrad or loss_rise")
    value: float | None = Field(description="its value at this step (None when the loss is not a finite number)")
    threshold: float | None = Field(description="the limit it crossed for this severity (None for the finiteness test)")
    layers: list[str] = Field(
        default_factory=list, description="layers the signal names (dead-layer and non-finite-gradient detectors)"
    )
    message: str
    episode: Literal["start", "end"] | None = Field(
        None,
        description="for a condition that persists (plateau, dead layers; not under seed_rules): 'start' when it "
        "begins, 'end' when it clears; None for one-off events",
    )
    since_step: int | None = Field(None, description="an episode's end: the step its condition began")
    duration_steps: int | None = Field(None, description="an episode's end: steps from since_step to this step")


class Episode(BaseModel):
    """A condition still going on when the read stopped."""

    type: SignalType
    since_step: int = Field(description="the step its condition began")
    layers: list[str] = Field(default_factory=list, description="for dead layers: the layers still dead")
    message: str


def severity_key(s: Signal) -> tuple[int, int]:
    """Most severe first, then earliest."""
    return SEVERITY_RANK[s.severity], s.step
