"""One analysis checkpoint reduced to the numbers the viewer uses (a Frame), and a run of them: a thousand
frames of a 0.5B model fit in tens of MB where the parsed files would take hundreds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tools.watch.analysis_schema import CheckpointDigest, Movement


@dataclass(slots=True)
class Frame:
    step: int
    loss: float | None
    reasons: list[str]
    path: Path
    grad: dict[str, float]  # parameter → grad norm (recorded gradients only)
    moved: dict[str, float]  # parameter → ‖w − w_ref‖ / ‖w_ref‖
    moved_rms: dict[str, float]  # parameter (‖w_ref‖ = 0) → RMS of w − w_ref
    activations: dict[str, tuple[float, float, float]]  # module → (mean, std, sparsity)
    entropy: dict[str, list[float]]  # attention key → per head
    max_attn: dict[str, list[float]]

    @property
    def triggered(self) -> list[str]:
        return [r for r in self.reasons if r != "scheduled"]


def frame_of(digest: CheckpointDigest, path: Path) -> Frame:
    weights = digest["weights"].items()
    return Frame(
        step=digest["step"],
        loss=digest.get("loss"),
        reasons=list(digest["reasons"]),
        path=path,
        grad={name: g["norm"] for name, g in digest["gradients"].items()},
        moved={name: w["moved"] for name, w in weights if "moved" in w},
        moved_rms={name: w["moved_rms"] for name, w in weights if "moved_rms" in w},
        activations={n: (a["mean"], a["std"], a["sparsity"]) for n, a in digest.get("activations", {}).items()},
        entropy={key: a["entropy_per_head"] for key, a in digest.get("attention", {}).items()},
        max_attn={key: a["max_attn_per_head"] for key, a in digest.get("attention", {}).items()},
    )


@dataclass
class Run:
    """A folder's readable checkpoints in step order, with what holds for the whole run."""

    dir: Path
    frames: list[Frame]
    shapes: dict[str, list[int]]  # every weight seen, in first-seen order
    movement: Movement | None  # the last checkpoint's movement block
    reference_norms: dict[str, float] | None  # ‖w_ref‖ per weight, from the reference checkpoint when it was read
    grad_clip: float | None  # the last recorded one
    notes: list[str] = field(default_factory=list)
