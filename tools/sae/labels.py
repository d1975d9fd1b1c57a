"""Feature labels from where they are known: a --labels file, a labels.json beside the SAE, and for SAEs with a
Neuronpedia id the feature's page there. A feature nobody labelled stays unlabelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolserver.contract import ToolError

NEURONPEDIA = "https://www.neuronpedia.org"
LABELS_HINT = 'a JSON object {"feature": "label"}, or {"hook": {"feature": "label"}} for several SAEs'


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ToolError(f"labels file {path} is unreadable: {e}", LABELS_HINT) from None


def _feature_map(data: Any, where: str) -> dict[int, str]:
    if not isinstance(data, dict):
        raise ToolError(f"{where} is a JSON {type(data).__name__}, not an object", LABELS_HINT)
    out: dict[int, str] = {}
    for key, label in data.items():
        if not (isinstance(key, str) and key.strip().isdigit()) or not isinstance(label, str):
            raise ToolError(f"{where}: entry {key!r} is not feature-index → label text", LABELS_HINT)
        out[int(key)] = label
    return out


def labels_for(hook: str, spec: str, n_saes: int, labels_file: str | None) -> dict[int, str]:
    """The labels of one SAE: those beside it, overridden by the --labels file (per hook, or flat for one SAE)."""
    labels: dict[int, str] = {}
    beside = Path(spec) / "labels.json"
    if beside.is_file():
        labels.update(_feature_map(_read(beside), str(beside)))
    if labels_file:
        path = Path(labels_file).expanduser()
        data = _read(path)
        if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            if hook in data:
                labels.update(_feature_map(data[hook], f"{path}[{hook}]"))
        elif n_saes == 1:
            labels.update(_feature_map(data, str(path)))
        else:
            raise ToolError(
                f"{path} labels one SAE, but {n_saes} are diffed", "key the labels by hook, or pick --layer"
            )
    return labels


def neuronpedia_url(neuronpedia_id: str | None, feature: int) -> str | None:
    return f"{NEURONPEDIA}/{neuronpedia_id}/{feature}" if neuronpedia_id else None
