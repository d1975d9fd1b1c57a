"""Loading a session's model into memory, once per process (kept in `session.cache`).

LLMs load through TransformerLens' TransformerBridge (HF weights, TransformerLens hook names such as
`blocks.{L}.hook_resid_post`); encoders load through `transformers` AutoModel.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from session.catalog import Kind
from session.resolve import model_dims, read_config
from session.state import Session
from toolserver.registry import ToolError

log = logging.getLogger("trainspect")
MODEL_KEY = "model"
CHECKPOINT_KEY = "checkpoint"
# checkpoint tensors a model of the base's class may lack: task heads of another wrapper, legacy buffers
_SKIPPABLE = re.compile(r"^(cls|lm_head|score|classifier|qa_outputs|pooler)\.|(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


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
    checkpoint: str | None = None  # set when the weights come from a fine-tune checkpoint
    step: int | None = None


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
    config = read_config(model_dir)
    d_model, n_layers = model_dims(config)
    dev = device()
    try:
        if kind == "llm":
            model, tokenizer = _boot_bridge(model_dir, config, dev, hf_model)
        else:
            model, tokenizer = _load_encoder(model_dir, dev, hf_model)
    except ToolError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        log.debug("model load failed", exc_info=True)
        raise ToolError(f"cannot load the {kind} model in {model_dir}: {first_line(e)}", "check the directory holds weights, config.json and tokenizer files") from None
    return LoadedModel(kind, str(model_dir), model, tokenizer, d_model, n_layers, dev)


def _boot_bridge(model_dir: Path, config: dict[str, Any], dev: str, hf_model: Any | None) -> tuple[Any, Any]:
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import determine_architecture_from_hf_config

    try:  # the bridge's own lookup, asked first: its error lists all ~150 adapters on one line
        determine_architecture_from_hf_config(SimpleNamespace(**config))
    except ValueError:
        raise ToolError(
            f"TransformerLens' TransformerBridge has no adapter for model type {config.get('model_type')!r} "
            f"(architectures {config.get('architectures')}) in {model_dir}",
            "LLM sessions need an architecture it supports, e.g. GPT-2, Llama, Mistral, Qwen, Gemma, GPT-NeoX (Pythia), OPT, Phi",
        ) from None
    bridge = TransformerBridge.boot_transformers(str(model_dir), device=dev, hf_model=hf_model.to(dev) if hf_model is not None else None)
    bridge.eval()
    return bridge, bridge.tokenizer


def _load_encoder(model_dir: Path, dev: str, hf_model: Any | None) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    model = hf_model if hf_model is not None else AutoModel.from_pretrained(str(model_dir))
    return model.to(dev).eval(), AutoTokenizer.from_pretrained(str(model_dir))


def load_checkpoint_model(session: Session, checkpoint: str | Path) -> LoadedModel:
    """The session's architecture with a checkpoint's weights, to run beside the base model.

    Any checkpoint session.checkpoints reads: full tensors are copied into the base model by normalised
    name; LoRA pairs are merged as W + scale·B@A. The last checkpoint loaded stays cached for the process.
    """
    from session.checkpoints import open_checkpoint

    path = Path(checkpoint).expanduser().resolve()
    key = (str(path), _newest_mtime(path))
    cached = session.cache.get(CHECKPOINT_KEY)
    if isinstance(cached, tuple) and cached[0] == key and cached[1].source == session.model_source:
        return cached[1]
    base_dir = Path(session.model_source)
    with open_checkpoint(path) as reader:
        hf_model = _base_hf_model(base_dir, session.kind)
        _apply_checkpoint(hf_model, reader, base_dir)
        step = reader.step
    loaded = load_from_dir(base_dir, session.kind, hf_model=hf_model)
    loaded.checkpoint, loaded.step = str(path), step
    session.cache[CHECKPOINT_KEY] = (key, loaded)
    return loaded


def _newest_mtime(path: Path) -> int:
    """When the checkpoint last changed: a directory's own mtime misses files rewritten in place."""
    if not path.exists():
        return 0
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return max((p.stat().st_mtime_ns for p in files), default=path.stat().st_mtime_ns)


def _base_hf_model(base_dir: Path, kind: Kind) -> Any:
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if kind == "llm" else AutoModel
    kwargs = {"attn_implementation": "eager"} if kind == "llm" else {}
    try:
        return auto.from_pretrained(str(base_dir), dtype=torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise ToolError(f"cannot load the base model in {base_dir}: {first_line(e)}", "start the session on a save_pretrained directory") from None


def _apply_checkpoint(model: torch.nn.Module, reader: Any, base_dir: Path) -> None:
    """Overwrite the model's weights in place: checkpoint tensors by normalised name, then LoRA updates.

    Names, shapes, tied embeddings and LoRA orientation are settled by the loader's `align`, exactly as
    weight-diff sees them; here only the mapping onto the loaded module's parameters is left.
    """
    from session.checkpoint_keys import normalise_key
    from session.checkpoints import align, open_checkpoint

    with open_checkpoint(base_dir) as base:
        alignment = align(base, reader)
    foreign = [k for k in alignment.only_in_checkpoint if not _SKIPPABLE.search(k)]
    if foreign:
        raise ToolError(f"{reader.path} has {len(foreign)} tensors the base {base_dir} lacks, e.g. {', '.join(foreign[:3])}", "is the checkpoint from another architecture?")
    targets = {normalise_key(name): tensor for name, tensor in model.state_dict().items()}
    pairs = reader.lora_pairs()
    unplaced = [k for k in [*alignment.common, *pairs] if k not in targets and not _SKIPPABLE.search(k)]
    if unplaced:
        raise ToolError(f"the loaded model from {base_dir} has no parameter for {len(unplaced)} of {reader.path}'s tensors, e.g. {', '.join(unplaced[:3])}",
                        "is the base directory's architecture the one the checkpoint was trained on?")
    with torch.no_grad():
        for k in alignment.common:
            if k in targets:
                targets[k].copy_(reader.get(k))
        for k, pair in pairs.items():
            if k in targets:
                target = targets[k]
                target.add_((pair.left().to(target.dtype) @ pair.right().to(target.dtype)) * pair.scale)


def first_line(e: Exception) -> str:
    """An exception's first line (library messages can run to pages), or its type when empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
