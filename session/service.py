"""The session operations behind start_session, load_sae and session_status."""

from __future__ import annotations

from pathlib import Path

from session.catalog import CatalogEntry, for_dir, lookup
from session.model_cache import ModelCache
from session.models import is_loaded
from session.resolve import model_dims, read_config, resolve_model
from session.sae import SaeInfo, cached_sae, saes_loaded
from session.state import (
    RECENT_CALLS,
    SaeRef,
    Session,
    SessionStatus,
    check_id,
    list_sessions,
    load_session,
    session_path,
    set_aside,
    set_current,
)
from toolserver.contract import ToolError


def start_session(session_id: str, model_spec: str) -> tuple[Session, Path | None]:
    """Resolve the model (config files only), persist the session and make it current.

    Restarting an id with the same model keeps it as it was (SAE, history); with another model the
    history is kept and the SAE and regression history, which belonged to the old model, are dropped.
    An unreadable session file is renamed aside, never overwritten; its new path is returned.
    """
    check_id(session_id)
    resolved = resolve_model(model_spec)
    source = str(resolved.path)
    kept = set_aside(session_id)
    previous = load_session(session_id) if session_path(session_id).exists() else None
    if previous is not None and previous.model_source == source:
        session = previous
    else:
        session = Session(id=session_id, model=model_spec, model_source=source, kind=resolved.kind)
        if previous is not None:
            session.history = previous.history
    session.save()
    set_current(session_id)
    return session, kept


def catalog_entry(session: Session) -> CatalogEntry | None:
    return lookup(session.model) or for_dir(Path(session.model_source))


def dims(session: Session) -> tuple[int, int]:
    """(d_model, n_layers) of the session's model, from its config.json."""
    return model_dims(read_config(Path(session.model_source)))


def default_layer(session: Session) -> int:
    """The catalog's layer for this model, else the middle block."""
    entry = catalog_entry(session)
    return entry.default_layer if entry else dims(session)[1] // 2


def load_saes(session: Session, specs: list[str], models: ModelCache) -> tuple[Session, list[SaeInfo], list[SaeRef]]:
    """Load SAEs (each checked against the model's d_model and depth, at most one per hook) into the cache and
    attach them to the session; nothing is stored unless every one loads. Returns the infos and the SAEs replaced."""
    d_model, n_layers = dims(session)
    infos = []
    for spec in specs:
        path = Path(spec.strip()).expanduser()
        stored = str(path.resolve()) if path.exists() else spec.strip()  # absolute, so any cwd finds it
        _, info = cached_sae(stored, models, d_model=d_model, n_layers=n_layers, default_layer=default_layer(session))
        infos.append(info)
    by_hook: dict[str, str] = {}
    for info in infos:
        if info.hook in by_hook:
            raise ToolError(
                f"SAEs {by_hook[info.hook]} and {info.spec} both read {info.hook}", "load one SAE per hook (layer)"
            )
        by_hook[info.hook] = info.spec
    replaced = session.attach([SaeRef(spec=i.spec, hook=i.hook, layer=i.layer, d_sae=i.d_sae) for i in infos])
    session.save()
    return session, infos, replaced


def status(session: Session, models: ModelCache) -> SessionStatus:
    try:
        d_model, n_layers = dims(session)
    except ToolError as e:
        raise ToolError(
            f"session {session.id!r}: its model {session.model_source} is no longer readable ({e.message})",
            "start the session again",
        ) from None
    return SessionStatus(
        id=session.id,
        model=session.model,
        model_source=session.model_source,
        kind=session.kind,
        d_model=d_model,
        n_layers=n_layers,
        default_layer=default_layer(session),
        saes=session.saes,
        created_at=session.created_at,
        calls=len(session.history),
        recent_calls=session.history[-RECENT_CALLS:],
        model_in_memory=is_loaded(session, models),
        saes_in_memory=saes_loaded(session, models),
        other_sessions=[s for s in list_sessions() if s != session.id],
    )
