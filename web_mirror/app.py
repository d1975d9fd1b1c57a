"""The web orchestrator: ingests mirror events, serves sessions, cards, full results, a live stream and the page.

The stream is Server-Sent Events whose ids are the event log's `seq`, so a page that reconnects with
`Last-Event-ID` (or opens with `?after=` the `last_seq` of its card snapshot) misses nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolserver.contract import LiveFamily, MirrorContract, Severity
from web_mirror.cards import Folder, newest_first
from web_mirror.events import Event, event_type_pattern
from web_mirror.store import SessionInfo, Store
from web_mirror.wire import wire_value

STATIC = Path(__file__).parent / "static"
RENDERERS = STATIC / "cards"  # one <kind>.js per card kind
MAX_BODY = 8 * 1024 * 1024  # a full weight-diff envelope of a large model is well under this
MAX_BATCH = 1000
MAX_DEPTH = 64  # nesting of an event's data: results are tables, never deep
MAX_ERRORS = 20  # validation errors listed in a 422 (a bad 1000-event batch could have thousands)
STREAM_BATCH = 500
RECONNECT_MS = 1000  # how soon a page's EventSource retries after a dropped stream (the browser's default is ~3 s)
COALESCE_S = 0.005  # after a wake-up, let a burst of single-event POSTs gather into one stream message
_ID = {"min_length": 1, "max_length": 200}
SEQ_MAX = 2**63 - 1  # SQLite's INTEGER: a larger cursor cannot name an event


def _seq(value: str | None) -> str | None:
    if value and int(value) > SEQ_MAX:
        raise ValueError(f"a seq is at most {SEQ_MAX}")
    return value


def _not_too_deep(data: dict[str, Any]) -> dict[str, Any]:
    """Refuse absurd nesting up front (without recursing): storing and folding walk the payload recursively."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend(
            (v, depth + 1)
            for v in (value.values() if isinstance(value, dict) else value)
            if isinstance(v, (dict, list))
        )
    return data


class _IngestEvent(Event):
    """A mirror event as POSTed (web_mirror.events.Event, with the server's validation spelled out)."""

    model_config = ConfigDict(strict=True)  # no silent coercions: `"ts": false` is an error, not 1970

    event_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description="idempotency key: an event replayed with the same id is stored once",
        **_ID,
    )
    session: str = Field(description="session the card belongs to", **_ID)
    call_id: str = Field(description="the card: a tool call id, or the run id of a training/simulation stream", **_ID)
    ts: float = Field(default_factory=time.time, allow_inf_nan=False, description="unix time the event happened")
    data: Annotated[dict[str, Any], AfterValidator(_not_too_deep)] = Field(
        default_factory=dict,
        description=f"the event's payload (see web_mirror.events.Event), nested {MAX_DEPTH} levels at most",
    )


def ingest_model(families: list[LiveFamily]) -> type[_IngestEvent]:
    """The POSTed event, its `type` limited to tool.* and the declared live families (so the OpenAPI schema says so)."""
    declared = ", ".join(f"{f.prefix}.*" for f in families) or "no live families"
    return create_model(  # type: ignore[call-overload,no-any-return]
        "IngestEvent",
        __base__=_IngestEvent,
        __doc__=_IngestEvent.__doc__,
        type=(
            str,
            Field(
                pattern=event_type_pattern(f.prefix for f in families),
                max_length=100,
                description=f"tool.start|progress|result|error, or an event of a declared live family ({declared})",
            ),
        ),
    )


class IngestReply(BaseModel):
    accepted: int = Field(description="events stored now")
    duplicates: int = Field(description="events already stored under the same event_id (ignored)")
    last_seq: int = Field(description="position of the last stored event in the log")


class Progress(BaseModel):
    fraction: float | str | None
    message: str | None


class LiveState(BaseModel):
    """The bounded live series of a card fed by a live family's events (see contract.LiveFamily)."""

    family: str = Field(description="the family's prefix, e.g. training.watch")
    label: str | None = Field(description="the stream's name (the family's label_key, e.g. the run)")
    points: list[dict[str, Any]] = Field(
        description=(
            "the family's fields of the kept point events (max_points at most, plus any pinned beyond half of that), "
            "each with n (its ordinal among the stream's point events) and pinned (a marker sits on it)"
        )
    )
    markers: list[dict[str, Any]] = Field(description="marker events' payloads (e.g. signals), in arrival order")
    summary: Any
    seen: int = Field(description="point events folded so far")
    stride: int = Field(description="unpinned points older than the latest are those whose n is a multiple of this")
    pinned: int = Field(description="kept points a marker sits on")


class Card(BaseModel):
    """The fold of one call's events: what the page renders (never the full result)."""

    call_id: str
    session: str
    kind: str = Field(description="card kind: a registered tool's card (static/cards/<kind>.js draws it), else generic")
    tool: str | None
    status: Literal["running", "ok", "error"]
    first_seq: int
    last_seq: int
    started_ts: float
    ended_ts: float | None
    duration_s: float | str | None
    args: dict[str, Any] | None
    progress: Progress | None
    slim: Any = Field(description="the tool's slim card payload")
    findings: list[dict[str, Any]]
    error: str | None
    hint: str | None
    has_result: bool = Field(description="the full result is at GET /api/calls/{call_id}")
    live: LiveState | None
    extra: list[dict[str, Any]] = Field(description="the latest other events of the card")


class Cards(BaseModel):
    session: str
    last_seq: int = Field(description="open the stream with ?after=last_seq to continue from this snapshot")
    cards: list[Card] = Field(description="newest first")


class Problem(BaseModel):
    detail: str


class PageContract(BaseModel):
    """What the page needs to draw cards: which kinds have a renderer module, and how live families fold."""

    renderers: list[str] = Field(
        description="card kinds drawn by /static/cards/<kind>.js; others get the generic table"
    )
    families: list[LiveFamily]
    severities: tuple[Severity, ...]


_bearer = HTTPBearer(auto_error=False, description="the server's --token")
_query_token = APIKeyQuery(
    name="token", auto_error=False, description="the token, for EventSource (which cannot send headers)"
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
QueryToken = Annotated[str | None, Depends(_query_token)]


# the body limiter answers in JSON, or in plain text when the limit trips while the body is being read
_TOO_LARGE: dict[str, Any] = {
    "model": Problem,
    "description": "body too large",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


class _FoldedCards:
    """Each session's cards as folded so far, with the seq folded up to: a request folds only the events
    stored since the last one. Memory only: a restarted server folds the log afresh to the same cards."""

    def __init__(self, store: Store, folder: Folder) -> None:
        self.store = store
        self.folder = folder
        self._lock = threading.Lock()  # one fold at a time: requests run in a thread pool
        self._sessions: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}

    def cards(self, session_id: str) -> tuple[int, list[Card]]:
        """(the seq of the session's last event, its cards newest first); (0, []) for an unknown session."""
        with self._lock:
            last_seq, cards = self._sessions.get(session_id, (0, {}))
            events = self.store.events(session_id, after=last_seq)
            if events:
                self.folder.fold_into(cards, events)
                last_seq = events[-1].seq
                self._sessions[session_id] = (last_seq, cards)
            return last_seq, [Card(**c) for c in newest_first(cards)]


class _Hub:
    """Wakes every stream when events are stored (an Event swapped per change: no lost wake-ups)."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


def create_app(
    home: Path,
    *,
    contract: MirrorContract | None = None,
    token: str | None = None,
    max_body: int = MAX_BODY,
    hosts: list[str] | None = None,
) -> FastAPI:
    """The app over the store in `home`, for the tools `contract` describes (the front door that starts the mirror
    passes the registry's; without one only tool.* events are accepted and every card is generic). With `hosts`,
    requests naming any other Host get a 400: a page on some other site cannot rebind its DNS name to 127.0.0.1
    and read a tokenless mirror as same-origin."""
    contract = contract or MirrorContract()
    store = Store.in_home(home)
    folded = _FoldedCards(store, Folder(contract.families))
    hub = _Hub()
    page_contract = PageContract(
        renderers=[k for k in contract.cards if (RENDERERS / f"{k}.js").is_file()],
        families=contract.families,
        severities=contract.severities,
    )
    ingest = ingest_model(contract.families)
    # built per app (the accepted types depend on the contract), so given as an object, not a string annotation
    body = Annotated[ingest | Annotated[list[ingest], Field(min_length=1, max_length=MAX_BATCH)], Body()]  # type: ignore[valid-type]

    def authorised(creds: Bearer, qtoken: QueryToken) -> None:
        given = creds.credentials if creds else qtoken
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(
        title="trainspect web mirror",
        version="1",
        description="Live cards of every trainspect tool call.",
        max_body_size=max_body,
        lifespan=_closing(store),
        exception_handlers={RequestValidationError: _invalid_request},
    )
    # the schema declares auth (and its 401) exactly when it is enforced
    api = [Depends(authorised)] if token else []
    errors: dict[int | str, dict[str, Any]] = (
        {401: {"model": Problem, "description": "missing or wrong token"}} if token else {}
    )

    async def post_events(events: Any) -> IngestReply:
        """Store one event or an ordered batch; replays (same event_id) are ignored."""
        batch = events if isinstance(events, list) else [events]
        stored, duplicates = await run_in_threadpool(store.ingest, batch)
        if stored:
            hub.notify()
        last = stored[-1].seq if stored else await run_in_threadpool(store.last_seq)
        return IngestReply(accepted=len(stored), duplicates=duplicates, last_seq=last)

    post_events.__annotations__ = {"events": body, "return": IngestReply}
    app.post(
        "/api/events",
        dependencies=api,
        responses={**errors, 400: {"model": Problem, "description": "the body could not be read"}, 413: _TOO_LARGE},
    )(post_events)

    @app.get("/api/contract", dependencies=api, responses=errors)
    async def page_contract_() -> PageContract:
        """Card kinds with a renderer and the live families, as the registered tools declare them."""
        return page_contract

    @app.get("/api/sessions", dependencies=api, responses=errors)
    async def list_sessions() -> list[SessionInfo]:
        """Every session, most recently active first."""
        return await run_in_threadpool(store.sessions)

    @app.get("/api/sessions/{session_id:path}/cards", dependencies=api, responses={**errors, 404: {"model": Problem}})
    async def session_cards(session_id: str) -> Cards:
        """The session's cards, folded from its events, newest first."""
        last_seq, cards = await run_in_threadpool(folded.cards, session_id)
        if not cards:
            raise HTTPException(404, f"no session {session_id!r}")
        return Cards(session=session_id, last_seq=last_seq, cards=cards)

    @app.get("/api/calls/{call_id:path}", dependencies=api, responses={**errors, 404: {"model": Problem}})
    async def call_result(call_id: str) -> dict[str, Any]:
        """The full result envelope of a finished tool call."""
        result = await run_in_threadpool(store.result, call_id)
        if result is None:
            raise HTTPException(404, f"no result for call {call_id!r}")
        return result

    @app.get(
        "/api/sessions/{session_id:path}/stream", dependencies=api, responses=errors, response_class=EventSourceResponse
    )
    async def session_stream(
        session_id: str,
        after: Annotated[int, Query(ge=0, le=SEQ_MAX, description="send events with seq > after")] = 0,
        last_event_id: Annotated[
            str | None,
            Header(pattern=r"^[0-9]{0,19}$", description="set by a reconnecting EventSource: a seq this stream sent"),
            AfterValidator(_seq),
        ] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        """The session's events as SSE: `event: mirror`, data = a JSON array of events in order (each without
        its full result), id = the seq of the last one, so Last-Event-ID resumes right after it."""
        cursor = max(after, int(last_event_id or 0))
        yield ServerSentEvent(comment="trainspect mirror", retry=RECONNECT_MS)
        while True:
            changed = hub.changed
            batch = await run_in_threadpool(store.events_json, session_id, cursor, STREAM_BATCH)
            if batch is not None:
                cursor, data = batch
                yield ServerSentEvent(raw_data=data, event="mirror", id=str(cursor))
                continue
            try:
                await asyncio.wait_for(changed.wait(), timeout=5.0)
            except TimeoutError:
                continue
            await asyncio.sleep(COALESCE_S)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(_Hardening)
    if hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.state.store = store
    return app


class _Hardening:
    """No MIME sniffing, no referrers, on every response (plain ASGI: no per-request task overhead)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_hardened if scope["type"] == "http" else send)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body minus its echo of the input: a refused 8 MiB batch is not sent back, and input
    UTF-8 cannot encode (a lone surrogate) cannot turn the 422 into a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in errors[:MAX_ERRORS]]
    return JSONResponse(wire_value({"detail": detail}), status_code=422)


def _closing(store: Store) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    return lifespan


# no inline script, no remote anything: escaped text is the first defence, this is the second
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}
