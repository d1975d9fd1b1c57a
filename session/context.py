"""What a tool's run function gets besides its arguments: the call's session and the process's models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from session.model_cache import ModelCache
from session.state import Session
from toolserver.contract import ToolError

NO_SESSION_HINT = "run: trainspect session start --id ID --model SPEC"


@dataclass
class ToolContext:
    """session: the call's session (None only for tools registered with needs_session=False when none exists);
    models: the model cache of the front door that runs the call (see session.model_cache)."""

    session: Session | None
    models: ModelCache = field(default_factory=ModelCache)

    def require_session(self) -> Session:
        if self.session is None:
            raise ToolError("no session started", NO_SESSION_HINT)
        return self.session

    def base_dir(self) -> Path:
        """The session's base model as a local directory: what tools that read weights compare against."""
        session = self.require_session()
        path = Path(session.model_source)
        if not path.is_dir():
            raise ToolError(
                f"the session's base model {session.model_source} is not a local directory",
                "start the session on a local save_pretrained directory or a catalog model",
            )
        return path
