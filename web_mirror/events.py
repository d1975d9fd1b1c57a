"""The events the runner, the training emitters and the simulator send to the web mirror.

Every event belongs to a session and to a card: `call_id` is the tool call's id, or for a live family's
events (contract.LiveFamily, e.g. `training.watch.*`) the run id that groups them into one card.
`event_id` is the idempotency key: a replayed event is stored once.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

TOOL_EVENT_TYPE = r"tool\.(start|progress|result|error)"


def event_type_pattern(prefixes: Iterable[str]) -> str:
    """The event types a mirror accepts: the runner's tool.* events and the declared live families'."""
    families = "|".join(re.escape(p) + r"\.[a-z0-9_.]+" for p in sorted(prefixes))
    return rf"^({TOOL_EVENT_TYPE}{'|' + families if families else ''})$"


class Event(BaseModel):
    """One event. `data` by type:

    tool.start     {tool, card, args}
    tool.progress  {fraction, message}
    tool.result    {tool, card, duration_s, slim, findings, result}  — `result` is the full envelope,
                   stored for GET /api/calls/{call_id}; cards and the stream carry only `slim`
    tool.error     {tool, card, duration_s, error, hint}
    training.watch.step    {run, snapshot}  (a StepSnapshot as a dict)
    training.watch.signal  {run, signal}
    training.watch.summary {run, summary}
    (any declared family)  {run, ...}
    """

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=200)
    type: str = Field(max_length=100)
    session: str = Field(max_length=200)
    call_id: str = Field(max_length=200)
    ts: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)
