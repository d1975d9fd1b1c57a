"""Model spec (catalog slug, HF id or local directory) → a local HF directory and its kind.

Only config files are read here: resolving is cheap, loading weights happens later (session.models).
A hub id resolves through the HF cache, offline when HF_HUB_OFFLINE is set.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from session.catalog import CATALOG, CatalogEntry, Kind, for_dir, lookup
from toolserver.contract import ToolError, missing

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What a model needs to load: configs, tokenizer files, weights (safetensors first, .bin only if needed)
_META_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
_SAFETENSORS = ["*.safetensors", "*.safetensors.index.json"]
_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
_ENCODER_ARCH = re.compile(
    r"(ForMaskedLM|ForSequenceClassification|ForTokenClassification|ForQuestionAnswering|ForPreTraining)$"
)
_CAUSAL_ARCH = re.compile(r"(ForCausalLM|LMHeadModel)$")


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    path: Path  # local save_pretrained directory holding config.json
    kind: Kind
    hf_id: str | None  # the hub id it came from, if any
    entry: CatalogEntry | None  # catalog entry, when the spec is a slug or a catalogued HF id


def resolve_model(spec: str) -> ResolvedModel:
    """The local directory and kind for a model spec; ToolError (one line) when it cannot be found."""
    spec = spec.strip()
    if not spec:
        raise ToolError("model spec is empty", "pass a catalog slug, an HF id or a local save_pretrained directory")
    path = Path(spec).expanduser()
    if path.exists() or _looks_like_path(spec):
        local = _local_dir(spec, path)
        entry = for_dir(local)
        return ResolvedModel(spec, local, detect_kind(read_config(local)), entry.hf_id if entry else None, entry)
    entry = lookup(spec)
    if entry is not None and (bundled := entry.bundled_dir()) is not None:
        return ResolvedModel(spec, bundled, detect_kind(read_config(bundled)), entry.hf_id, entry)
    hf_id = entry.hf_id if entry else spec
    if not HF_ID.match(hf_id):
        raise ToolError(f"model spec {spec!r} is neither a directory, a catalog slug nor an HF id", _slug_hint())
    local = _from_hub(spec, hf_id, known_slug=entry is not None)
    return ResolvedModel(spec, local, detect_kind(read_config(local)), hf_id, entry)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or spec.endswith("/")


def _local_dir(spec: str, path: Path) -> Path:
    if not path.exists():
        raise ToolError(
            f"model directory {spec} {missing(path)}", "pass a save_pretrained directory, a catalog slug or an HF id"
        )
    if not path.is_dir():
        raise ToolError(
            f"model path {spec} is a file, not a save_pretrained directory", "pass the directory holding config.json"
        )
    if not (path / "config.json").is_file():
        raise ToolError(f"model directory {spec} has no config.json", "pass a directory written by save_pretrained")
    return path.resolve()


def _slug_hint() -> str:
    return f"known slugs: {', '.join(CATALOG)}; or pass a local save_pretrained directory"


def _from_hub(spec: str, hf_id: str, *, known_slug: bool) -> Path:
    """The snapshot directory in the HF cache, downloading it when the hub is reachable."""
    from huggingface_hub import is_offline_mode, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    hint = (
        "pass a local save_pretrained directory"
        if known_slug or "/" in spec
        else f"{spec!r} is not a catalog slug; {_slug_hint()}"
    )
    offline = is_offline_mode()
    try:
        local = Path(snapshot_download(hf_id, allow_patterns=_META_PATTERNS + _SAFETENSORS, local_files_only=offline))
        if not offline and not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(hf_id, allow_patterns=_META_PATTERNS + _BIN))
    except GatedRepoError:
        raise ToolError(
            f"model {hf_id} is gated on the hub",
            "accept its licence on huggingface.co and set HF_TOKEN, or pass a local directory",
        ) from None
    except RepositoryNotFoundError:
        raise ToolError(f"model {spec!r}: no repository {hf_id} on the hub", hint) from None
    except (LocalEntryNotFoundError, OSError, HFValidationError):
        why = "offline (HF_HUB_OFFLINE is set)" if offline else "unreachable"
        raise ToolError(f"model {spec!r} ({hf_id}) is not in the local HF cache and the hub is {why}", hint) from None
    if not (local / "config.json").is_file():
        raise ToolError(f"model {spec!r}: the cached snapshot {local} has no config.json", hint)
    return local


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ToolError(f"cannot read {path}: {e}", "pass a directory written by save_pretrained") from None
    if not isinstance(config, dict):
        raise ToolError(f"{path} is not a JSON object", "pass a directory written by save_pretrained")
    return config


def detect_kind(config: dict[str, Any]) -> Kind:
    """`llm` for a causal LM, `embedding` for an encoder-only model.

    The family (model_type in transformers' masked-LM / causal-LM tables) decides before a head's name,
    so a decoder with a classification head (a reward model) stays an LLM; head names decide only for
    model types transformers does not know (remote code).
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    model_type = str(config.get("model_type", ""))
    named = f"model type {model_type!r} (architectures {archs})"
    if config.get("is_encoder_decoder"):
        raise ToolError(
            f"{named} is an encoder-decoder",
            "trainspect handles causal LMs and encoder-only models (BERT-like), not T5/BART-style models",
        )
    if config.get("is_decoder") or any(_CAUSAL_ARCH.search(a) for a in archs):
        return "llm"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "embedding"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "llm"
    if any(_ENCODER_ARCH.search(a) for a in archs):
        return "embedding"
    raise ToolError(
        f"cannot tell whether {named} is a causal LM or an encoder",
        'set `architectures` in config.json, e.g. ["LlamaForCausalLM"] or ["BertForMaskedLM"]',
    )


def model_dims(config: dict[str, Any]) -> tuple[int, int]:
    """(d_model, n_layers) from an HF config, whatever the architecture calls them."""
    d_model = next(
        (config[k] for k in ("hidden_size", "n_embd", "d_model", "dim") if isinstance(config.get(k), int)), None
    )
    n_layers = next(
        (
            config[k]
            for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
            if isinstance(config.get(k), int)
        ),
        None,
    )
    if d_model is None or n_layers is None:
        text = config.get("text_config")
        if isinstance(text, dict):
            return model_dims(text)
        raise ToolError(
            f"config.json of model type {config.get('model_type')!r} names no hidden size / layer count",
            "pass a standard HF model directory",
        )
    return d_model, n_layers
