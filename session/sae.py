"""Loading a sae-lens SAE: a local directory written by `sae.save_model`, or `release/sae_id` from the registry.

The hook point comes from the SAE's own metadata (`cfg.metadata.hook_name`); the layer is parsed from
it (`blocks.{L}.…`), falling back to the model's default layer when the hook names none.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from session.models import device
from session.state import Session
from toolserver.registry import ToolError

log = logging.getLogger("trainspect")
SAE_KEY = "sae"
_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|layer)[._](\d+)(?:\.|/|$)")


@dataclass(frozen=True)
class SaeInfo:
    spec: str
    source: Literal["local", "pretrained"]
    hook: str
    layer: int
    d_in: int
    d_sae: int
    architecture: str


def parse_layer(hook: str) -> int | None:
    """The block index in a TransformerLens hook name (blocks.6.hook_resid_post → 6)."""
    m = _LAYER.search(hook)
    return int(m.group(1)) if m else None


def load_sae(spec: str, *, d_model: int | None = None, n_layers: int | None = None, default_layer: int | None = None) -> tuple[Any, SaeInfo]:
    """Load the SAE and check it fits the model (d_in == d_model, layer in range)."""
    spec = spec.strip()
    path = Path(spec).expanduser()
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
    if not isinstance(hook, str) or not hook:
        hook = f"blocks.{layer}.hook_resid_post"
    d_in = int(sae.cfg.d_in)
    if d_model is not None and d_in != d_model:
        raise ToolError(f"SAE {spec} has d_in {d_in} but the session's model has d_model {d_model}", "load an SAE trained on this model")
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ToolError(f"SAE {spec} hooks layer {layer} but the session's model has {n_layers} layers", "load an SAE trained on this model")
    info = SaeInfo(spec, source, hook, layer, d_in, int(sae.cfg.d_sae), sae.cfg.architecture())
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
        raise ToolError(f"cannot load the SAE in {spec}: {_first_line(e)}", "pass a directory written by sae.save_model") from None


def _load_pretrained(spec: str) -> Any:
    from huggingface_hub import is_offline_mode
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
    if is_offline_mode():
        raise ToolError(f"SAE {spec} needs the HF hub, which is unreachable (offline, HF_HUB_OFFLINE is set)", "pass a local sae-lens directory written by sae.save_model")
    try:
        return SAE.from_pretrained(release, sae_id, device=device())
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        log.debug("SAE download failed", exc_info=True)
        raise ToolError(f"cannot fetch SAE {spec} from the hub: {_first_line(e)}", "check the network, or pass a local sae-lens directory") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
