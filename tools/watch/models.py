"""Input, output and card of the watch tool (the MCP schema, CLI flags and JSON export derive from these)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tools.watch.engine import EngineConfig
from tools.watch.readers import Format
from tools.watch.snapshot import Episode, Signal, SignalType
from tools.watch.watcher import SERIES_POINTS, RunSummary
from toolserver.contract import Severity


class WatchInput(EngineConfig):
    metrics: str = Field(
        description="path to the run's step events: a .jsonl file, a trainer_state.json or a Lightning metrics.csv"
    )
    follow: bool = Field(
        False, description="keep reading as the file grows (stop with Ctrl-C, or after idle_timeout_s without new data)"
    )
    idle_timeout_s: float = Field(
        300.0, ge=0, description="in follow mode, stop after this many seconds without new data (0: never)"
    )
    since_last: bool = Field(
        False,
        description="continue from where the previous watch call on this file stopped: only new signals are returned",
    )
    run: str | None = Field(None, description="name for this run on the web card (default: the file's folder and name)")
    max_signals: int = Field(
        50,
        ge=1,
        le=1000,
        description="signals listed in the result: each type's worst first, then the rest most severe first (counts "
        "cover all)",
    )


class Series(BaseModel):
    step: list[int]
    loss: list[float | None]
    maxGrad: list[float | None]


class SignalGroup(BaseModel):
    """Every signal of one type during the call (under seed_rules a lasting condition fires once per cooldown)."""

    type: SignalType
    severity: Severity = Field(description="the worst severity it fired with")
    count: int = Field(description="signals fired: one-off events and episode starts")
    ended: int = Field(0, description="episodes of this type that ended")
    first_step: int
    last_step: int


class WatchResult(BaseModel):
    run: str
    metrics: str = Field(description="absolute path of the file read")
    format: Format
    since_last: bool = Field(description="true when this result covers only data new since the previous call")
    new_steps: int = Field(description="steps read by this call")
    summary: RunSummary = Field(description="cumulative over the whole run read so far")
    signals: list[Signal] = Field(
        description="signals fired during this call, most severe first (capped by max_signals; "
        "every type that fired is represented)"
    )
    signals_total: int = Field(description="signals fired during this call")
    groups: list[SignalGroup] = Field(
        description="signals fired during this call per type: worst severity first, ties in priority order"
    )
    ongoing: list[Episode] = Field(
        default_factory=list, description="conditions started, not ended, when the read stopped (plateau, dead layers)"
    )
    notes: list[str] = Field(default_factory=list)
    series: Series = Field(
        description=f"downsampled to at most {SERIES_POINTS} points: last step, mean loss, max maxGrad per bucket"
    )


class WatchCard(BaseModel):
    """The watch card: sparklines with markers, a signal feed by severity, the summary."""

    run: str
    series: Series
    signals: list[Signal] = Field(description="the result's signals, most severe first (the first 100)")
    ongoing: list[Episode] = Field(default_factory=list)
    summary: RunSummary
