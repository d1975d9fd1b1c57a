"""A simulation saved under --out, for part 2 and `compare` to read back:

    simulation.json         the SimulationResult (schema_version; readers refuse any other)
    tensors.safetensors     mean_grad.<parameter> (pass 2), resid_grad.<hook> (pass 2), base_acts_mean.<hook> (pass 1)

Both written then renamed, so a reader never sees half a file; an existing simulation in the directory is
replaced only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from tools.simulate.models import SCHEMA_VERSION, SimulationResult
from toolserver.contract import ToolError, atomic_write

RESULT, TENSORS = "simulation.json", "tensors.safetensors"


def save(out: Path, result: SimulationResult, tensors: dict[str, torch.Tensor]) -> list[str]:
    out = out.expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolError(f"cannot create --out {out}: {e}", "pick a writable directory") from None
    written = [str((out / RESULT).resolve())]
    if tensors:
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{TENSORS}.", suffix=".tmp")
        os.close(fd)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, out / TENSORS)
        written.append(str((out / TENSORS).resolve()))
    result.artifacts = written
    atomic_write(out / RESULT, result.model_dump_json(indent=1))
    return written


def read(path: str | Path) -> SimulationResult:
    """A saved simulation (its directory or its simulation.json)."""
    p = Path(path).expanduser()
    p = p / RESULT if p.is_dir() else p
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ToolError(
            f"cannot read simulation {p}: {e}", f"expected a directory written by simulate --out ({RESULT})"
        ) from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ToolError(
            f"simulation {p} has schema_version {version!r}; this trainspect reads {SCHEMA_VERSION!r}",
            "re-run the simulation with this version",
        )
    try:
        return SimulationResult.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ToolError(
            f"simulation {p} is malformed at {'.'.join(map(str, err['loc']))}: {err['msg']}", "re-run it"
        ) from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    p = p / TENSORS if p.is_dir() else p
    if not p.is_file():
        raise ToolError(f"no simulation tensors at {p}", "run simulate with passes 1 and 2 and --out")
    return load_file(str(p))
