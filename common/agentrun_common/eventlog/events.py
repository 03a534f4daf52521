"""An event of a run's stream, and its Server-Sent Events framing: the same bytes from the runner's live stream
and from the gateway's replay."""

import json
from dataclasses import dataclass
from typing import Any, Literal

from agentrun_common.sse import encode_event

EventType = Literal["iteration", "token", "tool_call", "tool_result", "approval_requested", "checkpoint", "finished"]


@dataclass(frozen=True)
class Event:
    id: int
    type: EventType
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Event":
        return cls(id=int(raw["id"]), type=raw["type"], data=dict(raw["data"]))


def format_event(event: Event) -> bytes:
    return encode_event(event.type, json.dumps(event.data, separators=(",", ":")), id=event.id)
