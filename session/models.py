"""Loading a session's model into memory, once per process (kept in `session.cache`).

LLMs load through TransformerLens' TransformerBridge (HF weights, TransformerLens hook names such as
`blocks.{L}.hook_resid_post`); encoders load through `transformers` AutoModel.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from session.catalog import Kind
from session.resolve import model_dims, read_config
from session.state import Session
from toolserver.registry import ToolError

log = logging.getLogger("trainspect")
MODEL_KEY = "model"


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModel:
    """A model ready to run: a TransformerBridge (kind llm) or an HF encoder (kind embedding)."""

    kind: Kind
    source: str
    model: Any
    tokenizer: Any
    d_model: int
    n_layers: int
    device: str


def load_model(session: Session) -> LoadedModel:
    """The session's base model, loaded on first use and reused for the rest of the process."""
    if is_loaded(session):
        return session.cache[MODEL_KEY]
    loaded = load_from_dir(Path(session.model_source), session.kind)
    session.cache[MODEL_KEY] = loaded
    return loaded


def is_loaded(session: Session) -> bool:
    cached = session.cache.get(MODEL_KEY)
    return isinstance(cached, LoadedModel) and cached.source == session.model_source


def load_from_dir(model_dir: Path, kind: Kind, hf_model: Any | None = None) -> LoadedModel:
    """Load a save_pretrained directory; `hf_model` swaps in already-built weights of the same config."""
    d_model, n_layers = model_dims(read_config(model_dir))
    dev = device()
    try:
        if kind == "llm":
            model, tokenizer = _boot_bridge(model_dir, dev, hf_model)
        else:
            model, tokenizer = _load_encoder(model_dir, dev, hf_model)
    except ToolError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        log.debug("model load failed", exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ToolError(f"cannot load the {kind} model in {model_dir}: {first}", "check the directory holds weights, config.json and tokenizer files") from None
    return LoadedModel(kind, str(model_dir), model, tokenizer, d_model, n_layers, dev)


def _boot_bridge(model_dir: Path, dev: str, hf_model: Any | None) -> tuple[Any, Any]:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(model_dir), device=dev, hf_model=hf_model.to(dev) if hf_model is not None else None)
    bridge.eval()
    return bridge, bridge.tokenizer


def _load_encoder(model_dir: Path, dev: str, hf_model: Any | None) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    model = hf_model if hf_model is not None else AutoModel.from_pretrained(str(model_dir))
    return model.to(dev).eval(), AutoTokenizer.from_pretrained(str(model_dir))
