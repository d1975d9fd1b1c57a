"""Loading a sae-lens SAE: a local directory written by `sae.save_model`, or `release/sae_id` from the registry.

The hook point comes from the SAE's own metadata (`cfg.metadata.hook_name`); the layer is parsed from
it (`blocks.{L}.…`), falling back to the model's default layer when the hook names none. An SAE without
a hook name is assumed to read that layer's resid_post, and says so (`hook_assumed`).

An SAE trained on TransformerLens-processed weights (its metadata's `model_from_pretrained_kwargs`, read
with HookedTransformer.from_pretrained's defaults) is run on a model processed the same way, as far as the
processing changes what its hook reads (`processing_for`); what cannot be matched is refused in one line.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from session.model_cache import ModelCache
from session.models import RAW, Processing, device
from session.state import Session
from toolserver.contract import ToolError, first_line, missing

log = logging.getLogger("trainspect")
_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|layer)[._](\d+)(?:\.|/|$)")
_RESIDUAL_WRITE = re.compile(r"hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)$")


@dataclass(frozen=True)
class SaeInfo:
    spec: str
    source: Literal["local", "pretrained"]
    hook: str
    hook_assumed: bool  # the metadata names no hook: the default layer's resid_post is a guess
    layer: int
    d_in: int
    d_sae: int
    architecture: str
    model_kwargs: dict[str, Any]  # how sae-lens loaded the model it was trained on (HookedTransformer.from_pretrained)

    @property
    def centred(self) -> bool:
        """It reads the residual stream (or a write to it) of a model whose writing weights were centred, so
        every vector it saw had mean 0 over d_model (LayerNorm models); the session's unprocessed HF weights don't."""
        return bool(self.model_kwargs.get("center_writing_weights")) and _RESIDUAL_WRITE.search(self.hook) is not None


def parse_layer(hook: str) -> int | None:
    """The block index in a TransformerLens hook name (blocks.6.hook_resid_post → 6)."""
    m = _LAYER.search(hook)
    return int(m.group(1)) if m else None


def load_sae(
    spec: str, *, d_model: int | None = None, n_layers: int | None = None, default_layer: int | None = None
) -> tuple[Any, SaeInfo]:
    """Load the SAE and check it fits the model (d_in == d_model, layer in range)."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    with (
        warnings.catch_warnings()
    ):  # sae-lens warns about model_from_pretrained_kwargs; SaeInfo.centred says what matters here
        warnings.filterwarnings("ignore", message=r"(?s).*model_from_pretrained_kwargs")
        if path.exists() or spec.startswith(("/", "./", "../", "~")):
            sae, source = _load_local(spec, path), "local"
        elif "/" in spec:
            sae, source = _load_pretrained(spec), "pretrained"
        else:
            raise ToolError(
                f"SAE spec {spec!r} is neither a directory nor release/sae_id",
                "pass a sae-lens directory (from sae.save_model) or e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre",
            )
    hook = sae.cfg.metadata.hook_name
    layer = parse_layer(hook) if isinstance(hook, str) else None
    if layer is None:
        layer = default_layer
    if layer is None:
        raise ToolError(
            f"SAE {spec}: its metadata names no layer (hook {hook!r}) and the model has no default layer",
            "save the SAE with metadata.hook_name = blocks.L.hook_resid_post",
        )
    assumed = not isinstance(hook, str) or not hook
    if assumed:
        hook = f"blocks.{layer}.hook_resid_post"
    d_in = int(sae.cfg.d_in)
    if d_model is not None and d_in != d_model:
        raise ToolError(
            f"SAE {spec} has d_in {d_in} but the session's model has d_model {d_model}",
            "load an SAE trained on this model",
        )
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ToolError(
            f"SAE {spec} hooks layer {layer} but the session's model has {n_layers} layers",
            "load an SAE trained on this model",
        )
    kwargs = sae.cfg.metadata.model_from_pretrained_kwargs
    info = SaeInfo(
        spec=spec,
        source=source,
        hook=hook,
        hook_assumed=assumed,
        layer=layer,
        d_in=d_in,
        d_sae=int(sae.cfg.d_sae),
        architecture=sae.cfg.architecture(),
        model_kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
    )
    return sae, info


def cached_sae(spec: str, models: ModelCache, **checks: Any) -> tuple[Any, SaeInfo]:
    """An SAE and its info, loaded once while the front door's cache holds it."""
    return models.sae(("sae", spec, _stamp(spec)), lambda: load_sae(spec, **checks))


def session_saes(session: Session, models: ModelCache) -> list[tuple[Any, SaeInfo]]:
    """The session's SAEs, in layer order; ToolError when none was loaded."""
    if not session.saes:
        raise ToolError(f"session {session.id!r} has no SAE", "run: trainspect load sae SPEC")
    return [cached_sae(ref.spec, models) for ref in session.saes]


def saes_loaded(session: Session, models: ModelCache) -> int:
    held = {info.spec for _, info in models.saes()}
    return sum(ref.spec in held for ref in session.saes)


def _stamp(spec: str) -> int:
    path = Path(spec)
    return max((p.stat().st_mtime_ns for p in path.iterdir()), default=0) if path.is_dir() else 0


# HookedTransformer.from_pretrained's processing flags and defaults; the hooks whose values each one changes
_PROCESSING_DEFAULTS = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}
_CHANGED_BY = {
    "center_writing_weights": _RESIDUAL_WRITE,  # every write to the residual stream loses its mean (LayerNorm models)
    "fold_ln": re.compile(r"\.ln[^.]*\.hook_normalized$|ln_final\.hook_normalized$"),
    "fold_value_biases": re.compile(r"\.hook_(v|z)$"),
    "center_unembed": re.compile(r"hook_unembed$"),
}
# kwargs that say where or how fast the model ran, not what it computed
_HARMLESS = {"device", "n_devices", "move_to_device", "dtype", "torch_dtype", "trust_remote_code", "first_n_layers"}


def processing_for(info: SaeInfo) -> tuple[Processing, str]:
    """The weight processing to run the SAE's model with, and a sentence saying why.

    No recorded kwargs: raw weights (an SAE saved without them gives no other evidence). Recorded kwargs: the
    HookedTransformer defaults they override, kept only where they change what the SAE's hook reads (processing
    that leaves the hook's values alone is skipped, and said so). Unknown kwargs are refused.
    """
    kwargs = info.model_kwargs
    if not kwargs:
        return RAW, "the SAE records no model_from_pretrained_kwargs: run on raw HF weights"
    unknown = sorted(k for k in kwargs if k not in _PROCESSING_DEFAULTS and k not in _HARMLESS)
    if unknown:
        raise ToolError(
            f"SAE {info.spec} was trained on a model loaded with {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}, "
            "which the model runtime cannot reproduce",
            "use an SAE trained on this model's raw or standard-processed weights",
        )
    flags = {k: bool(kwargs.get(k, default)) for k, default in _PROCESSING_DEFAULTS.items()}
    applied = {k: v and _CHANGED_BY[k].search(info.hook) is not None for k, v in flags.items()}
    processing = Processing(**applied)
    skipped = [k for k, v in flags.items() if v and not applied[k]]
    why = f"the SAE was trained with {', '.join(f'{k}={v}' for k, v in flags.items())}: {processing.describe()}"
    if skipped:
        why += f" ({', '.join(skipped)} skipped: they do not change {info.hook})"
    return processing, why


def _load_local(spec: str, path: Path) -> Any:
    from sae_lens import SAE
    from sae_lens.constants import SAE_CFG_FILENAME

    if not path.is_dir():
        why = missing(path) if not path.exists() else "is not a directory"
        raise ToolError(f"SAE directory {spec} {why}", "pass a directory written by sae.save_model, or release/sae_id")
    if not (path / SAE_CFG_FILENAME).is_file():
        raise ToolError(f"SAE directory {spec} has no {SAE_CFG_FILENAME}", "pass a directory written by sae.save_model")
    try:
        return SAE.load_from_disk(str(path), device=device())
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        log.debug("SAE load failed", exc_info=True)
        raise ToolError(
            f"cannot load the SAE in {spec}: {first_line(e)}", "pass a directory written by sae.save_model"
        ) from None


def _load_pretrained(spec: str) -> Any:
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import LocalEntryNotFoundError
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, sae_id = spec.split("/", 1)
    registry = get_pretrained_saes_directory()
    if release not in registry:
        raise ToolError(
            f"SAE release {release!r} is not in sae-lens' pretrained registry",
            "spec is release/sae_id, e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre, or a local directory",
        )
    ids = registry[release].saes_map
    if sae_id not in ids:
        sample = ", ".join(list(ids)[:4])
        raise ToolError(f"SAE id {sae_id!r} is not in release {release!r}", f"ids there include: {sample}")
    try:  # from the HF cache when it holds the SAE, which works offline too
        return SAE.from_pretrained(release, sae_id, device=device())
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE is set)" if is_offline_mode() else "unreachable"
        raise ToolError(
            f"SAE {spec} is not in the local HF cache and the hub is {why}",
            "pass a local sae-lens directory written by sae.save_model",
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        log.debug("SAE download failed", exc_info=True)
        raise ToolError(
            f"cannot fetch SAE {spec} from the hub: {first_line(e)}",
            "check the network, or pass a local sae-lens directory",
        ) from None
