"""Every registered tool as an MCP tool (mcp 2.x `MCPServer`), plus `start_tool` / `get_result`.

Each tool's parameters are its input model's fields and its output schema is the result envelope,
so structured content validates against what `list_tools` advertises. Tool runs happen in a worker
thread; their progress becomes MCP progress notifications. Loaded models stay in memory between
calls (per session), which is what makes a long-lived server faster than repeated CLI calls.
"""

import inspect
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as MCPToolError
from mcp.server.mcpserver.exceptions import UnexpectedToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from pydantic import BaseModel, Field, ValidationError

from session.model_cache import ModelCache
from session.state import Session, current_session
from toolserver.contract import Envelope, ToolError, ToolSpec, envelope_model, first_line, validation_problems
from toolserver.registry import all_tools
from toolserver.render import render
from toolserver.runner import invoke, load_result, validate_args

log = logging.getLogger("trainspect")
LIST_LIMIT = 50  # items per list in an MCP result; the rest is paged through get_result
TEXT_LIMIT = 12_000  # characters of the readable text block
LOOPBACK = ("127.0.0.1", "localhost", "::1")
INSTRUCTIONS = """trainspect shows what a fine-tune did to a language model.
Start with start_session (a model slug, HF id or local directory), then call analysis tools such as
run_weight_diff with a checkpoint path. Each result has `findings` (read first) and `follow_ups`
(suggested next calls). Long tables are paged with get_result(call_id, section, offset). For calls
that may outlast your request timeout, use start_tool(tool, args) and poll get_result(call_id)."""


@dataclass
class Job:
    """A tool call started with start_tool: polled through get_result."""

    tool: str
    status: Literal["running", "done", "error"] = "running"
    fraction: float = 0.0
    message: str = "started"
    error: str | None = None


@dataclass
class ServerState:
    """What the server keeps between calls: its mirror client, its model cache (models stay warm from one
    call to the next; keys name the model directory and checkpoint stamp, so a restarted session with
    another model never sees the old one) and the calls started with start_tool."""

    mirror: Any | None
    models: ModelCache = field(default_factory=ModelCache)
    jobs: dict[str, Job] = field(default_factory=dict)

    def session(self) -> Session | None:
        try:
            return current_session()
        except ToolError:
            return None

    def invoke(self, spec: ToolSpec[Any, Any], args: dict[str, Any], **kw: Any) -> Envelope[Any]:
        sess = self.session() if spec.needs_session or spec.session_arg is None else None
        return invoke(spec, args, session=sess, models=self.models, mirror=self.mirror, **kw)


def unexpected(spec: ToolSpec[Any, Any], e: BaseException) -> str:
    log.error("%s failed outside the runner", spec.name, exc_info=e)
    return f"{spec.name} failed unexpectedly: {type(e).__name__}: {first_line(e)}"


def _signature(spec: ToolSpec[Any, Any]) -> inspect.Signature:
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    for name, f in spec.input_model.model_fields.items():
        annotation = Annotated[f.annotation, Field(description=f.description)]
        default = inspect.Parameter.empty if f.is_required() else f.get_default(call_default_factory=True)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    return inspect.Signature(params, return_annotation=envelope_model(spec))


def _tool_handler(spec: ToolSpec[Any, Any], state: ServerState) -> Any:
    async def handler(ctx: Context, **kwargs: Any) -> Envelope[Any]:
        def progress(fraction: float, message: str) -> None:
            anyio.from_thread.run(ctx.report_progress, round(fraction * 100, 1), 100.0, message)

        def run() -> Envelope[Any]:
            return state.invoke(spec, kwargs, on_progress=progress)

        try:
            envelope = await anyio.to_thread.run_sync(run)
        except ToolError as e:
            raise MCPToolError(str(e)) from None
        except Exception as e:  # the runner turns a tool's crash into a ToolError; this is the net under the runner
            raise MCPToolError(unexpected(spec, e)) from None
        return compact_result(spec, envelope)

    handler.__signature__ = _signature(spec)  # type: ignore[attr-defined]
    handler.__name__ = spec.name
    return handler


def trim_lists(node: Any, path: str, limit: int, cut: dict[str, int]) -> Any:
    """Shorten every list longer than `limit` (recording its path and full length), so a result
    for a 80-layer model stays well inside what MCP clients accept."""
    if isinstance(node, dict):
        return {k: trim_lists(v, f"{path}.{k}", limit, cut) for k, v in node.items()}
    if isinstance(node, list):
        if len(node) > limit:
            cut[path] = len(node)
            node = node[:limit]
        return [trim_lists(v, f"{path}.{i}", limit, cut) for i, v in enumerate(node)]
    return node


def compact_result(spec: ToolSpec[Any, Any], envelope: Envelope[Any], *, limit: int = LIST_LIMIT) -> CallToolResult:
    """The envelope as structured content with long lists cut, plus the people view as text for
    clients that only show text to the model."""
    full = envelope.model_dump(mode="json")
    cut: dict[str, int] = {}
    full["result"] = trim_lists(full["result"], "result", limit, cut)
    full["truncated"] = cut
    text = render(spec, envelope)
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + f"\n… cut at {TEXT_LIMIT} characters; the structured content has the result"
    if cut:
        text += "\nShortened lists (page with get_result): " + ", ".join(f"{p} ({n} items)" for p, n in cut.items())
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=full)


def _description(spec: ToolSpec[Any, Any]) -> str:
    return f"{spec.summary}\nCLI: trainspect {spec.command}"


class ResultPage(BaseModel):
    call_id: str
    status: Literal["running", "done", "error"]
    fraction: float = Field(description="progress in [0, 1]")
    message: str
    section: str | None = None
    total: int | None = Field(default=None, description="length of the section when it is a list")
    offset: int = 0
    data: Any = None


def _section(full: dict[str, Any], section: str | None) -> Any:
    node: Any = full
    for part in (section or "").split(".") if section else []:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            keys = (
                list(node)[:20]
                if isinstance(node, dict)
                else f"a list of {len(node)}"
                if isinstance(node, list)
                else type(node).__name__
            )
            raise MCPToolError(f"no section {section!r} in the result (at {part!r}; available: {keys})")
    return node


class _Server(MCPServer):
    """MCPServer whose argument errors are one line naming each field and what it expected."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except MCPToolError as e:
            if isinstance(e.__cause__, ValidationError) and not isinstance(e, UnexpectedToolError):
                raise MCPToolError(f"invalid arguments for {name}: {validation_problems(e.__cause__)}") from e.__cause__
            raise


def build_server(mirror: Any | None = None) -> MCPServer:
    state = ServerState(mirror=mirror)
    server: MCPServer = _Server(name="trainspect", instructions=INSTRUCTIONS)
    specs = {spec.name: spec for spec in all_tools()}
    for spec in specs.values():
        server.add_tool(
            _tool_handler(spec, state), name=spec.name, description=_description(spec), structured_output=True
        )

    def start_tool(
        tool: Annotated[str, Field(description="name of the tool to run, as listed by list_tools")],
        args: Annotated[dict[str, Any], Field(description="the tool's arguments, as for a direct call")] = {},  # noqa: B006
    ) -> ResultPage:
        """Start a tool call in the background and return its call_id at once. Use for calls that may
        take longer than your request timeout (large checkpoints, long simulations); then poll
        get_result(call_id) until status is done."""
        spec = specs.get(tool)
        if spec is None:
            raise MCPToolError(f"unknown tool {tool!r}; available: {', '.join(specs)}")
        try:
            validate_args(spec, args)  # a bad argument is an answer now, not a job that fails later
        except ToolError as e:
            raise MCPToolError(str(e)) from None
        call_id = uuid.uuid4().hex
        job = Job(tool=tool)
        state.jobs[call_id] = job

        def progress(fraction: float, message: str) -> None:
            job.fraction, job.message = fraction, message

        def work() -> None:
            try:
                state.invoke(spec, args, on_progress=progress, call_id=call_id)
                job.status, job.fraction, job.message = "done", 1.0, "done"
            except ToolError as e:
                job.status, job.error, job.message = "error", str(e), str(e)
            except Exception as e:  # never "running" forever: every failure ends the call with its cause
                job.status, job.error = "error", unexpected(spec, e)
                job.message = job.error

        threading.Thread(target=work, name=f"trainspect-{tool}-{call_id[:8]}", daemon=True).start()
        return ResultPage(call_id=call_id, status="running", fraction=0.0, message="started")

    def get_result(
        call_id: Annotated[str, Field(description="the call_id of a finished or started call")],
        section: Annotated[
            str | None, Field(description="dotted path inside the result envelope, e.g. 'result.rows'")
        ] = None,
        offset: Annotated[int, Field(ge=0, description="first item when the section is a list")] = 0,
        limit: Annotated[int, Field(ge=1, le=200, description="items per page when the section is a list")] = 50,
    ) -> ResultPage:
        """Fetch a stored result by call_id — the whole envelope, or one section of it, paged — or the
        progress of a call started with start_tool. Cheap: reads a stored file, loads no model."""
        job = state.jobs.get(call_id)
        if job is not None and job.status != "done":
            return ResultPage(
                call_id=call_id, status=job.status, fraction=job.fraction, message=job.error or job.message
            )
        try:
            full = load_result(call_id)
        except ToolError as e:
            raise MCPToolError(str(e)) from None
        data = _section(full, section)
        total = None
        if isinstance(data, list):
            total = len(data)
            data = data[offset : offset + limit]
        return ResultPage(
            call_id=call_id,
            status="done",
            fraction=1.0,
            message="done",
            section=section,
            total=total,
            offset=offset,
            data=data,
        )

    server.add_tool(start_tool, name="start_tool", structured_output=True)
    server.add_tool(get_result, name="get_result", structured_output=True)
    return server


def serve(
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
    mirror_url: str | None = None,
    no_mirror: bool = False,
) -> None:
    from web_mirror.client import MirrorClient

    if http and host not in LOOPBACK:
        raise ToolError(
            f"refusing to serve MCP on {host}: it has no authentication",
            "bind 127.0.0.1 and tunnel if you need remote access",
        )
    mirror = MirrorClient.from_env(mirror_url, disabled=no_mirror)
    server = build_server(mirror)
    try:
        if http:
            server.run("streamable-http", host=host, port=port)
        else:
            server.run("stdio")
    finally:
        if mirror is not None:
            mirror.close()
