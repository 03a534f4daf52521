"""The run's event log: every event the stream serves, with a monotonic integer id.

The log is part of the checkpoint, so a replaced pod replays from ``Last-Event-ID`` too. Ids are
positions in the run's event sequence: a pod that resumes continues after the last checkpointed id,
and redoes the same step, so an id names the same point of the run across restarts.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

EventType = Literal["iteration", "token", "tool_call", "tool_result", "checkpoint", "finished"]


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


class Subscription:
    """One stream reader's view: events after a given id, through a bounded queue."""

    def __init__(self, log: "EventLog", queue_size: int) -> None:
        self._log = log
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        # Set when the reader fell further behind than the queue holds; it must reconnect.
        self.overflowed = asyncio.Event()

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()

    def close(self) -> None:
        self._log._subscriptions.discard(self)


class EventLog:
    """Append-only list of events; appending never waits for a reader."""

    def __init__(self, events: Sequence[Event] = ()) -> None:
        self._events: list[Event] = list(events)
        self._subscriptions: set[Subscription] = set()

    @property
    def events(self) -> Sequence[Event]:
        return self._events

    @property
    def last_id(self) -> int:
        return self._events[-1].id if self._events else 0

    def emit(self, type_: EventType, data: dict[str, Any]) -> Event:
        event = Event(id=self.last_id + 1, type=type_, data=data)
        self._events.append(event)
        for subscription in list(self._subscriptions):
            subscription.offer(event)
        return event

    def after(self, last_id: int) -> list[Event]:
        """Events with an id above ``last_id``, oldest first."""
        if not self._events or last_id >= self.last_id:
            return []
        # Ids are dense from 1, so the position is the id minus the first id.
        start = max(last_id - self._events[0].id + 1, 0)
        return self._events[start:]

    def subscribe(self, queue_size: int) -> Subscription:
        subscription = Subscription(self, queue_size)
        self._subscriptions.add(subscription)
        return subscription
