"""Loading a sae-lens SAE: a local directory written by `sae.save_model`, or `release/sae_id` from the registry.

The hook point comes from the SAE's own metadata (`cfg.metadata.hook_name`); the layer is parsed from
it (`blocks.{L}.…`), falling back to the model's default layer when the hook names none. An SAE without
a hook name is assumed to read that layer's resid_post, and says so (`hook_assumed`).
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from session.models import device, first_line
from session.state import Session
from toolserver.registry import ToolError

log = logging.getLogger("trainspect")
SAE_KEY = "sae"
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


def load_sae(spec: str, *, d_model: int | None = None, n_layers: int | None = None, default_layer: int | None = None) -> tuple[Any, SaeInfo]:
    """Load the SAE and check it fits the model (d_in == d_model, layer in range)."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    with warnings.catch_warnings():  # sae-lens warns about model_from_pretrained_kwargs; SaeInfo.centred says what matters here
        warnings.filterwarnings("ignore", message=r"(?s).*model_from_pretrained_kwargs")
        if path.exists() or spec.startswith(("/", "./", "../", "~")):
            sae, source = _load_local(spec, path), "local"
        elif "/" in spec:
            sae, source = _load_pretrained(spec), "pretrained"
        else:
            raise ToolError(f"SAE spec {spec!r} is neither a directory nor release/sae_id", "pass a sae-lens directory (from sae.save_model) or e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre")
    hook = sae.cfg.metadata.hook_name
    layer = parse_layer(hook) if isinstance(hook, str) else None
    if layer is None:
        layer = default_layer
    if layer is None:
        raise ToolError(f"SAE {spec}: its metadata names no layer (hook {hook!r}) and the model has no default layer", "save the SAE with metadata.hook_name = blocks.L.hook_resid_post")
    assumed = not isinstance(hook, str) or not hook
    if assumed:
        hook = f"blocks.{layer}.hook_resid_post"
    d_in = int(sae.cfg.d_in)
    if d_model is not None and d_in != d_model:
        raise ToolError(f"SAE {spec} has d_in {d_in} but the session's model has d_model {d_model}", "load an SAE trained on this model")
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ToolError(f"SAE {spec} hooks layer {layer} but the session's model has {n_layers} layers", "load an SAE trained on this model")
    kwargs = sae.cfg.metadata.model_from_pretrained_kwargs
    info = SaeInfo(
        spec=spec, source=source, hook=hook, hook_assumed=assumed, layer=layer, d_in=d_in, d_sae=int(sae.cfg.d_sae),
        architecture=sae.cfg.architecture(), model_kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
    )
    return sae, info


def session_sae(session: Session) -> Any:
    """The session's SAE object, loaded once per process; ToolError when none was loaded."""
    if not session.sae:
        raise ToolError(f"session {session.id!r} has no SAE", "run: trainspect load sae SPEC")
    if sae_is_loaded(session):
        return session.cache[SAE_KEY][1]
    sae, _ = load_sae(session.sae)
    session.cache[SAE_KEY] = (session.sae, sae)
    return sae


def sae_is_loaded(session: Session) -> bool:
    cached = session.cache.get(SAE_KEY)
    return isinstance(cached, tuple) and cached[0] == session.sae


def remember(session: Session, spec: str, sae: Any) -> None:
    session.cache[SAE_KEY] = (spec, sae)


def _load_local(spec: str, path: Path) -> Any:
    from sae_lens import SAE
    from sae_lens.constants import SAE_CFG_FILENAME

    if not path.is_dir():
        raise ToolError(f"SAE directory {spec} does not exist", "pass a directory written by sae.save_model, or release/sae_id")
    if not (path / SAE_CFG_FILENAME).is_file():
        raise ToolError(f"SAE directory {spec} has no {SAE_CFG_FILENAME}", "pass a directory written by sae.save_model")
    try:
        return SAE.load_from_disk(str(path), device=device())
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        log.debug("SAE load failed", exc_info=True)
        raise ToolError(f"cannot load the SAE in {spec}: {first_line(e)}", "pass a directory written by sae.save_model") from None


def _load_pretrained(spec: str) -> Any:
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import LocalEntryNotFoundError
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, sae_id = spec.split("/", 1)
    registry = get_pretrained_saes_directory()
    if release not in registry:
        raise ToolError(f"SAE release {release!r} is not in sae-lens' pretrained registry", "spec is release/sae_id, e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre, or a local directory")
    ids = registry[release].saes_map
    if sae_id not in ids:
        sample = ", ".join(list(ids)[:4])
        raise ToolError(f"SAE id {sae_id!r} is not in release {release!r}", f"ids there include: {sample}")
    try:  # from the HF cache when it holds the SAE, which works offline too
        return SAE.from_pretrained(release, sae_id, device=device())
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE is set)" if is_offline_mode() else "unreachable"
        raise ToolError(f"SAE {spec} is not in the local HF cache and the hub is {why}", "pass a local sae-lens directory written by sae.save_model") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        log.debug("SAE download failed", exc_info=True)
        raise ToolError(f"cannot fetch SAE {spec} from the hub: {first_line(e)}", "check the network, or pass a local sae-lens directory") from None
