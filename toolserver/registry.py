"""Every tool's one registration, found in the packages under tools/ rather than listed by hand.

A tool package's `__init__` holds its registrations as `TOOLS` (ToolSpec instances) and imports nothing heavy:
its run/slim/table functions are named lazily, so building the CLI parser, the MCP tool list or the web
mirror's contract loads no torch. The MCP schema, CLI flags, JSON export, card payload and renderer all derive
from these registrations.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any

import tools
from toolserver.contract import LiveFamily, MirrorContract, ToolSpec

_lock = threading.Lock()
_tools: list[ToolSpec[Any, Any]] | None = None


def _discover() -> list[ToolSpec[Any, Any]]:
    found: list[ToolSpec[Any, Any]] = []
    for info in sorted(pkgutil.iter_modules(tools.__path__), key=lambda i: i.name):
        if info.ispkg:
            found.extend(getattr(importlib.import_module(f"tools.{info.name}"), "TOOLS", ()))
    for attr in ("name", "command"):
        seen: dict[str, str] = {}
        for spec in found:
            value = getattr(spec, attr)
            if value in seen:
                raise ValueError(f"two tools register the {attr} {value!r} ({seen[value]} and {spec.name})")
            seen[value] = spec.name
    return found


def all_tools() -> list[ToolSpec[Any, Any]]:
    """Every registered tool, discovered on first use (importing registrations only, never a tool's work)."""
    global _tools
    with _lock:
        if _tools is None:
            _tools = _discover()
        return list(_tools)


def get_tool(name: str) -> ToolSpec[Any, Any]:
    """A tool by MCP name or CLI command; KeyError when none is registered."""
    for spec in all_tools():
        if name in (spec.name, spec.command):
            return spec
    raise KeyError(name)


def live_families() -> list[LiveFamily]:
    """The live event families the registered tools declare, each once."""
    families: dict[str, LiveFamily] = {}
    for spec in all_tools():
        for family in spec.live:
            if families.setdefault(family.prefix, family) != family:
                raise ValueError(f"live family {family.prefix!r} is declared twice, differently")
    return list(families.values())


def mirror_contract() -> MirrorContract:
    """What the web mirror must know of the registered tools (it imports none of them)."""
    cards = sorted({spec.card for spec in all_tools()} | {f.card for f in live_families()})
    return MirrorContract(cards=cards, families=live_families())
