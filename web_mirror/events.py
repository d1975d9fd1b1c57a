"""The events the runner, the training emitters and the simulator send to the web mirror.

Every event belongs to a session and to a card: `call_id` is the tool call's id, or for
`training.watch.*` / `simulate.*` families the run id that groups them into one card.
`event_id` is the idempotency key: a replayed event is stored once.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

# the event types the mirror accepts: the runner's tool.* events and the training/simulation families
EVENT_TYPE = r"^(tool\.(start|progress|result|error)|training\.watch\..+|simulate\..+)$"


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
    simulate.*             {run, ...}
    """

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=200)
    type: str = Field(max_length=100)
    session: str = Field(max_length=200)
    call_id: str = Field(max_length=200)
    ts: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)
