"""The `trainspect` command: one sub-command per registered tool, flags derived from its input model.

Exit codes: 0 ok, 1 error (one line on stderr), 2 a tool's own failing verdict (merge analysis).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from toolserver.contract import Envelope, ToolError, ToolSpec, front_door_type, unwrap_optional
from toolserver.registry import all_tools, mirror_contract
from toolserver.render import render


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Turn each field of a tool's input model into a flag (or a positional, if the field asks)."""
    for name, field in model.model_fields.items():
        _add_field(parser, name, field)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _add_field(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    """One flag per field, by the front-door type the registration already checked (contract.front_door_type)."""
    annotation = unwrap_optional(field.annotation)
    kind = front_door_type(field.annotation)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kwargs: dict[str, Any] = {"help": field.description or "", "dest": name, "metavar": name.upper()}
    if annotation is bool:
        kwargs.pop("metavar")
        kwargs["action"] = argparse.BooleanOptionalAction
        kwargs["default"] = field.default if not field.is_required() else False
    else:
        if kind == "list":
            inner = unwrap_optional(next(a for a in get_args(annotation) if a is not Ellipsis))
            kwargs["nargs"] = "+"
            kwargs["type"] = inner if inner in (int, float) else str
        elif kind == "literal":
            kwargs["choices"] = list(get_args(annotation))
            kwargs["type"] = type(get_args(annotation)[0])
            kwargs.pop("metavar")
        elif kind == "json":
            kwargs["type"] = _json_value
            kwargs["help"] += " (JSON)"
        else:
            kwargs["type"] = annotation if annotation in (int, float) else str
        if field.is_required():
            kwargs["required"] = not extra.get("positional")
        else:
            kwargs["default"] = argparse.SUPPRESS  # let the model supply its own default
    if extra.get("positional"):
        kwargs.pop("dest")
        kwargs.pop("required", None)
        parser.add_argument(name, **kwargs)
    else:
        parser.add_argument(_flag(name), **kwargs)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 like every other error: 2 is a failing merge verdict, which a script must tell apart
    from a mistyped flag (argparse's own default is 2). Sub-parsers are made of the same class.

    `joined` holds the two-word commands registered as one sub-command (see build_parser): their two words are
    read as that one name before parsing."""

    joined: frozenset[str] = frozenset()

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        if len(args) >= 2 and f"{args[0]} {args[1]}" in self.joined:
            args = [f"{args[0]} {args[1]}", *args[2:]]
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser(tools: Sequence[ToolSpec[Any, Any]]) -> argparse.ArgumentParser:
    """One sub-command per tool. Two-word commands share a group named by their first word ("sae diff", "sae
    train"), except where that word is itself a command ("simulate" and "simulate compare"): such a command is
    one sub-command named by both words, which the parser joins from argv, so both keep their own flags."""
    parser = _Parser(prog="trainspect", description="What a fine-tune did to a language model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    single = {spec.command for spec in tools if len(spec.command.split()) == 1}
    parser.joined = frozenset(
        spec.command for spec in tools if len(words := spec.command.split()) == 2 and words[0] in single
    )
    for spec in tools:
        words = spec.command.split()
        target = sub
        if spec.command in parser.joined:
            words = [spec.command]
        elif len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            target = groups[words[0]]
        p = target.add_parser(words[-1], help=spec.summary.split(". ")[0], description=spec.summary)
        add_model_arguments(p, spec.input_model)
        _add_common(p)
        p.set_defaults(spec=spec)

    mcp = sub.add_parser("mcp", help="serve every tool over MCP (stdio by default)")
    mcp.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    mcp.add_argument("--host", default="127.0.0.1")
    mcp.add_argument("--port", type=int, default=8765)
    mcp.add_argument("--mirror", help="web mirror URL (default $TRAINSPECT_MIRROR_URL or http://127.0.0.1:8002)")
    mcp.add_argument("--no-mirror", action="store_true", help="do not mirror tool calls to the web page")
    mcp.set_defaults(action="mcp")

    web = sub.add_parser("web", help="serve the web mirror (live cards of every tool call)")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8002)
    web.add_argument(
        "--token", default=os.environ.get("TRAINSPECT_MIRROR_TOKEN"), help="required to bind a non-loopback address"
    )
    web.add_argument(
        "--home", type=Path, metavar="DIR", help="state directory (default $TRAINSPECT_HOME or ~/.trainspect)"
    )
    web.set_defaults(action="web")
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--session",
        dest="_session",
        metavar="ID",
        help="session id (default: $TRAINSPECT_SESSION, else the last one started)",
    )
    p.add_argument(
        "--save", dest="_save", type=Path, metavar="PATH", help="write the schema_version=1 JSON export here"
    )
    p.add_argument(
        "--output",
        dest="_output",
        choices=["table", "json"],
        default="table",
        help="json prints the full result for scripts",
    )
    p.add_argument("--mirror", dest="_mirror", metavar="URL", help="web mirror URL for this call")
    p.add_argument("--no-mirror", dest="_no_mirror", action="store_true", help="do not mirror this call")


def _tool_args(ns: argparse.Namespace, spec: ToolSpec[Any, Any]) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k in spec.input_model.model_fields}


def _mirror(url: str | None, disabled: bool) -> Any | None:
    from web_mirror.client import MirrorClient

    return MirrorClient.from_env(url, disabled=disabled)


def _run_tool(ns: argparse.Namespace) -> int:
    from toolserver.progress import TerminalProgress
    from toolserver.runner import invoke

    spec: ToolSpec[Any, Any] = ns.spec
    rank = _join_ranks(spec, ns._session)
    if rank:
        return _run_rank(ns, rank)
    mirror = _mirror(ns._mirror, ns._no_mirror)
    table = ns._output == "table"
    bar = TerminalProgress(spec.command, enabled=table, lines=sys.stdout if table else sys.stderr)
    try:
        envelope = invoke(
            spec,
            _tool_args(ns, spec),
            session_id=ns._session,
            mirror=mirror,
            on_progress=bar.update,
            on_emit=bar.line,
        )
    finally:
        bar.close()
        if mirror is not None:
            mirror.close()
        _leave_ranks()
    if ns._save:
        _save(ns._save, envelope)
    if ns._output == "json":
        print(envelope.model_dump_json(indent=2))
    else:
        print(render(spec, envelope))
    return spec.exit_status(envelope.result) if spec.exit_status is not None else 0


# ----- torchrun: `torchrun --nproc-per-node N -m toolserver.cli simulate ...` ----------------------------------
def _world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _refuse_ranks(command: str) -> None:
    """Under torchrun (WORLD_SIZE > 1) only a distributed tool may run: any other would run N times over. Rank 0
    says so in one line; the others exit 1 quietly."""
    if _world_size() > 1:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(1)
        raise ToolError(
            f"{command} does not run under torchrun (WORLD_SIZE={_world_size()}): only simulate shards its work "
            "over ranks",
            f"run it as one process: trainspect {command} ...",
        )


def _join_ranks(spec: ToolSpec[Any, Any], session_id: str | None) -> int:
    """This process's rank (0 outside torchrun). Under torchrun every rank runs the tool on its share; they
    join the process group (gloo on CPU, nccl on GPU) before the call and must agree on the session (each reads
    it from its $TRAINSPECT_HOME: the same directory for all, or copies of it)."""
    if _world_size() <= 1:
        return 0
    if not spec.distributed:
        _refuse_ranks(spec.command)
    from session import distributed
    from session.state import current_session

    distributed.init_from_env()
    rank = distributed.world()[0]
    try:
        mine = current_session(session_id).id
    except ToolError as e:
        mine = f"none ({e.message})"
    seen = distributed.gather([mine])
    if len(set(seen)) > 1:
        _leave_ranks()
        raise ToolError(
            f"the torchrun ranks see different sessions: {', '.join(f'rank {i}: {s}' for i, s in enumerate(seen))}",
            "give every rank the same TRAINSPECT_HOME (and --session)",
        )
    return rank


def _run_rank(ns: argparse.Namespace, rank: int) -> int:
    """A rank other than 0: the same call on its share, writing nothing (no stored result, call record, mirror
    event, --save file, --out file or stdout); its errors name it."""
    from toolserver.runner import invoke

    spec: ToolSpec[Any, Any] = ns.spec
    try:
        envelope = invoke(spec, _tool_args(ns, spec), session_id=ns._session, writer=False)
    except ToolError as e:
        raise ToolError(f"rank {rank}: {e.message}", e.hint) from None
    finally:
        _leave_ranks()
    return spec.exit_status(envelope.result) if spec.exit_status is not None else 0


def _leave_ranks() -> None:
    if _world_size() > 1:
        from session import distributed

        distributed.leave()


def _save(path: Path, envelope: Envelope[Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(envelope.model_dump_json(indent=2))
    except OSError as e:
        raise ToolError(f"cannot write {path}: {e.strerror}", "choose a writable --save path") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(all_tools())
    ns = parser.parse_args(argv)
    try:
        if getattr(ns, "action", None):
            _refuse_ranks(ns.action)
        if getattr(ns, "action", None) == "mcp":
            from toolserver.mcp_server import serve

            serve(http=ns.http, host=ns.host, port=ns.port, mirror_url=ns.mirror, no_mirror=ns.no_mirror)
            return 0
        if getattr(ns, "action", None) == "web":
            from web_mirror.server import serve as serve_web

            serve_web(host=ns.host, port=ns.port, token=ns.token, home=ns.home, contract=mirror_contract())
            return 0
        return _run_tool(ns)
    except ToolError as e:
        print(f"error: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `trainspect ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
