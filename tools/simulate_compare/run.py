"""compare_simulations' run: read both saved simulations (schema-checked), compare them, rank what changed."""

from __future__ import annotations

from pathlib import Path

from session.context import ToolContext
from tools.simulate import artifacts
from tools.simulate.models import SimulationResult
from tools.simulate_compare.compare import compare
from tools.simulate_compare.models import CompareInput, CompareResult
from tools.simulate_compare.report import findings, follow_ups
from toolserver.contract import Outcome, Reporter, ToolError


def _read(field: str, spec: str) -> tuple[SimulationResult, str]:
    """One side and its simulation.json's resolved path; a bad file is one line naming the argument and the file."""
    path = Path(spec).expanduser()
    path = path / artifacts.RESULT if path.is_dir() else path
    try:
        return artifacts.read(path), str(path.resolve())
    except ToolError as e:
        raise ToolError(f"{field}: {e.message}", e.hint) from None


def run(ctx: ToolContext, args: CompareInput, reporter: Reporter) -> Outcome[CompareResult]:
    reporter.progress(0.1, "reading both simulations")
    a, path_a = _read("a", args.a)
    b, path_b = _read("b", args.b)
    reporter.progress(0.5, f"comparing {a.name} with {b.name}")
    result = compare(a, b, top=args.top, path_a=path_a, path_b=path_b)
    reporter.progress(1.0, f"compared {len(result.a.sections)} and {len(result.b.sections)} sections")
    return Outcome(result, findings(result), follow_ups(result))
