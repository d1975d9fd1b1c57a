"""Loading the models every analysis runs: the session's base, and any checkpoint the loader accepts beside it.

LLMs load through TransformerLens' TransformerBridge (HF weights, TransformerLens hook names such as
`blocks.{L}.hook_resid_post`); encoders through `transformers` AutoModel. A checkpoint's weights are put into
the base architecture: full tensors copied by normalised name, LoRA adapters either merged (W + scale·B@A, as
the loader's `align` orients them; equal to peft's merge_and_unload) or applied unmerged through peft. An
unmerged adapter runs through `transformers` itself, not the bridge: the bridge's fused-QKV attention (GPT-2)
reads c_attn's weight directly and would skip the LoRA update (measured: logits off by 0.34).

Models are cached by the front door's ModelCache (session.model_cache), keyed so that a rewritten checkpoint,
another adapter mode or another weight processing loads afresh. Everything runs in float32 on one device,
chosen once: CUDA when present, else the CPU.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch

from session.catalog import Kind
from session.model_cache import ModelCache
from session.resolve import model_dims, read_config
from session.run_info import Backend, RunInfo
from session.state import Session
from toolserver.contract import ToolError, first_line

log = logging.getLogger("trainspect")
DTYPE = torch.float32
Adapter = Literal["merged", "peft"]
# checkpoint tensors a model of the base's class may lack: task heads of another wrapper, legacy buffers
_SKIPPABLE = re.compile(
    r"^(cls|lm_head|score|classifier|qa_outputs|pooler)\.|(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$"
)


@functools.cache
def device() -> str:
    """Chosen once per process."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Processing:
    """TransformerLens weight processing (HookedTransformer's load-time defaults), applied to a bridge when an
    SAE was trained on processed weights. All False: the checkpoint's own (raw HF) weights."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False

    @property
    def raw(self) -> bool:
        return not any(vars(self).values())

    def describe(self) -> str:
        return (
            "raw HF weights"
            if self.raw
            else "TransformerLens processing: " + ", ".join(k for k, v in vars(self).items() if v)
        )


RAW = Processing()


@dataclass
class LoadedModel:
    """A model ready to run. `model` is a TransformerBridge (backend "bridge") or the HF module itself."""

    kind: Kind
    source: str  # the base model directory
    model: Any
    tokenizer: Any
    d_model: int
    n_layers: int
    n_ctx: int
    device: str
    backend: Backend
    checkpoint: str | None = None  # set when the weights come from a fine-tune checkpoint
    step: int | None = None
    adapter: Literal["none", "merged", "peft"] = "none"
    processing: Processing = RAW

    @property
    def hf(self) -> torch.nn.Module:
        """The underlying transformers module (for a bridge, the one it wraps)."""
        return self.model.original_model if self.backend == "bridge" else self.model

    def info(self) -> RunInfo:
        return RunInfo(
            device=self.device,
            dtype=str(DTYPE).removeprefix("torch."),
            backend=self.backend,
            adapter=self.adapter,
            processing=self.processing.describe(),
        )


@dataclass
class ModelPair:
    """The session's base and a checkpoint, loaded the same way, run on the same probes."""

    base: LoadedModel
    tuned: LoadedModel


def load_base(
    session: Session, models: ModelCache, processing: Processing = RAW, backend: Backend | None = None
) -> LoadedModel:
    """The session's base model, loaded on first use and reused while the cache holds it. backend forces how it
    runs: "transformers" for tools that need only logits and generations (KV-cached decoding, no hooks)."""
    key = _base_key(session, processing, backend)
    return models.model(key, lambda: _from_dir(Path(session.model_source), session.kind, processing, backend=backend))


def load_checkpoint(
    session: Session,
    checkpoint: str | Path,
    models: ModelCache,
    *,
    adapter: Adapter = "merged",
    processing: Processing = RAW,
    backend: Backend | None = None,
) -> LoadedModel:
    """The session's architecture with a checkpoint's weights (see the module doc). The base stays cached."""
    path = Path(checkpoint).expanduser().resolve()
    key = ("checkpoint", str(path), _newest_mtime(path), session.model_source, session.kind, adapter, processing)
    return models.model(
        (*key, backend),
        lambda: _from_checkpoint(session, path, adapter, processing, backend),
        keep=(_base_key(session, processing, backend),),
    )


def load_pair(
    session: Session,
    checkpoint: str | Path,
    models: ModelCache,
    *,
    adapter: Adapter = "merged",
    processing: Processing = RAW,
    backend: Backend | None = None,
) -> ModelPair:
    base = load_base(session, models, processing, backend)
    tuned = load_checkpoint(session, checkpoint, models, adapter=adapter, processing=processing, backend=backend)
    return ModelPair(base=base, tuned=tuned)


def load_owned(session: Session, checkpoint: str | Path, *, adapter: Adapter = "merged") -> LoadedModel:
    """Like load_checkpoint, but never cached: the caller owns the model and may change its weights (the merge
    gate merges a peft-applied adapter in place)."""
    return _from_checkpoint(session, Path(checkpoint).expanduser().resolve(), adapter, RAW)


def is_loaded(session: Session, models: ModelCache) -> bool:
    """Whether the cache holds the session's base model now."""
    return any(m.checkpoint is None and m.source == session.model_source for m in models.models())


def _base_key(session: Session, processing: Processing, backend: Backend | None = None) -> tuple[Any, ...]:
    source = Path(session.model_source)
    return ("base", session.model_source, session.kind, _newest_mtime(source), processing, backend)


def _from_dir(
    model_dir: Path, kind: Kind, processing: Processing, hf_model: Any | None = None, backend: Backend | None = None
) -> LoadedModel:
    """Load a save_pretrained directory; `hf_model` swaps in already-built weights of the same config."""
    config = read_config(model_dir)
    d_model, n_layers = model_dims(config)
    dev = device()
    backend = backend or ("bridge" if kind == "llm" else "transformers")
    if backend == "transformers" and not processing.raw:
        raise ToolError(
            f"cannot apply {processing.describe()} to a model run through transformers",
            "weight processing needs the TransformerLens bridge: merge the adapter, or use an SAE trained on raw "
            "weights",
        )
    try:
        if backend == "bridge":
            model, tokenizer = _boot_bridge(model_dir, config, dev, hf_model, processing)
        else:
            model, tokenizer = _load_hf(model_dir, kind, dev, hf_model)
    except ToolError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        log.debug("model load failed", exc_info=True)
        raise ToolError(
            f"cannot load the {kind} model in {model_dir}: {first_line(e)}",
            "check the directory holds weights, config.json and tokenizer files",
        ) from None
    if tokenizer.pad_token_id is None:  # GPT-2 ships none: batches pad with EOS, masked out everywhere
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        kind,
        str(model_dir),
        model,
        tokenizer,
        d_model,
        n_layers,
        _context_length(config, tokenizer),
        dev,
        backend,
        processing=processing,
    )


def _context_length(config: dict[str, Any], tokenizer: Any) -> int:
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit < 1 << 20 else 2048


def _boot_bridge(
    model_dir: Path, config: dict[str, Any], dev: str, hf_model: Any | None, processing: Processing
) -> tuple[Any, Any]:
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import determine_architecture_from_hf_config

    try:  # the bridge's own lookup, asked first: its error lists all ~150 adapters on one line
        determine_architecture_from_hf_config(SimpleNamespace(**config))
    except ValueError:
        raise ToolError(
            f"TransformerLens' TransformerBridge has no adapter for model type {config.get('model_type')!r} "
            f"(architectures {config.get('architectures')}) in {model_dir}",
            "LLM sessions need an architecture it supports, e.g. GPT-2, Llama, Mistral, Qwen, Gemma, GPT-NeoX "
            "(Pythia), OPT, Phi",
        ) from None
    bridge = TransformerBridge.boot_transformers(
        str(model_dir), device=dev, dtype=DTYPE, hf_model=hf_model.to(dev) if hf_model is not None else None
    )
    if not processing.raw:
        try:
            bridge.enable_compatibility_mode(disable_warnings=True, **vars(processing))
        except RuntimeError as e:
            raise ToolError(
                f"TransformerLens cannot apply {processing.describe()} to {model_dir}: {first_line(e)}",
                "use an SAE trained on this model's raw weights",
            ) from None
    bridge.eval()
    # the model's own tokenizer, as transformers loads it: the bridge's wrapper prepends a BOS by TransformerLens'
    # convention (GPT-2's own tokenizer adds none), so the same probe would be other tokens than transformers sees
    from transformers import AutoTokenizer

    return bridge, AutoTokenizer.from_pretrained(str(model_dir))


def _load_hf(model_dir: Path, kind: Kind, dev: str, hf_model: Any | None) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    model = hf_model if hf_model is not None else _base_hf_model(model_dir, kind)
    return model.to(dev).eval(), AutoTokenizer.from_pretrained(str(model_dir))


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
        return auto.from_pretrained(str(base_dir), dtype=DTYPE, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise ToolError(
            f"cannot load the base model in {base_dir}: {first_line(e)}",
            "start the session on a save_pretrained directory",
        ) from None


def _from_checkpoint(
    session: Session, path: Path, adapter: Adapter, processing: Processing, backend: Backend | None = None
) -> LoadedModel:
    from session.checkpoints import open_checkpoint

    base_dir = Path(session.model_source)
    with open_checkpoint(path) as reader:
        hf_model = _base_hf_model(base_dir, session.kind)
        unmerged = adapter == "peft" and reader.kind == "lora"
        _apply_checkpoint(hf_model, reader, base_dir, merge_lora=not unmerged)
        step, kind = reader.step, reader.kind
    if unmerged:
        hf_model = _apply_peft(hf_model, path)
    if unmerged or session.kind == "embedding":
        backend = "transformers"
    loaded = _from_dir(base_dir, session.kind, processing, hf_model=hf_model, backend=backend or "bridge")
    loaded.checkpoint, loaded.step = str(path), step
    loaded.adapter = "none" if kind == "full" else "peft" if unmerged else "merged"
    return loaded


def _apply_checkpoint(model: torch.nn.Module, reader: Any, base_dir: Path, *, merge_lora: bool) -> None:
    """Overwrite the model's weights in place: checkpoint tensors by normalised name, then (merge_lora) the LoRA
    updates. Names, shapes, ties and LoRA orientation are settled by the loader's `align`, exactly as weight-diff
    sees them; here only the mapping onto the loaded module's parameters is left."""
    from session.checkpoint_keys import normalise_key
    from session.checkpoints import align, open_checkpoint

    with open_checkpoint(base_dir) as base:
        alignment = align(base, reader)
    foreign = [k for k in alignment.only_in_checkpoint if not _SKIPPABLE.search(k)]
    if foreign:
        raise ToolError(
            f"{reader.path} has {len(foreign)} tensors the base {base_dir} lacks, e.g. {', '.join(foreign[:3])}",
            "is the checkpoint from another architecture?",
        )
    targets = {normalise_key(name): tensor for name, tensor in model.state_dict().items()}
    pairs = reader.lora_pairs()
    unplaced = [k for k in [*alignment.common, *pairs] if k not in targets and not _SKIPPABLE.search(k)]
    if unplaced:
        raise ToolError(
            f"the loaded model from {base_dir} has no parameter for {len(unplaced)} of {reader.path}'s tensors, "
            f"e.g. {', '.join(unplaced[:3])}",
            "is the base directory's architecture the one the checkpoint was trained on?",
        )
    with torch.no_grad():
        for k in alignment.common:
            if k in targets:
                targets[k].copy_(reader.get(k))
        if not merge_lora:
            return
        for k, pair in pairs.items():
            if k in targets:
                target = targets[k]
                target.add_((pair.left().to(target.dtype) @ pair.right().to(target.dtype)) * pair.scale)


def _apply_peft(model: torch.nn.Module, adapter_dir: Path) -> Any:
    """The adapter applied unmerged by peft itself. peft matches saved keys by their literal names, so an adapter
    saved from another wrapper of the same backbone (a BertForMaskedLM adapter on BertModel: `bert.` in every key)
    would get fresh B = 0 layers and only a warning; its factors are loaded here by normalised name instead, and
    every LoRA tensor the file holds must land on a module, and every module get one."""
    import warnings

    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from session.checkpoint_keys import normalise_key

    try:
        with warnings.catch_warnings():  # peft's missing-keys warning: the factors are loaded (and checked) below
            warnings.simplefilter("ignore", UserWarning)
            wrapped = PeftModel.from_pretrained(model, str(adapter_dir))
        saved = load_peft_weights(str(adapter_dir), device="cpu")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ToolError(
            f"peft cannot apply the adapter {adapter_dir}: {first_line(e)}", "merge it instead (adapter mode 'merged')"
        ) from None
    wanted = {normalise_key(k): k for k in get_peft_model_state_dict(wrapped)}
    placed = {wanted[normalise_key(k)]: v for k, v in saved.items() if normalise_key(k) in wanted}
    strays = [k for k in saved if normalise_key(k) not in wanted]
    empty = [k for k in wanted.values() if k not in placed]
    if strays or empty:
        named = strays or empty
        raise ToolError(
            f"peft placed the adapter {adapter_dir} on the base only in part: "
            + (f"{len(strays)} saved tensors have no module" if strays else f"{len(empty)} modules got no tensor")
            + f", e.g. {', '.join(named[:3])}",
            "its module names do not match this base; merge it instead (adapter mode 'merged')",
        )
    set_peft_model_state_dict(wrapped, placed)
    return wrapped.eval()
