"""The run's event log: every event the stream serves, with a monotonic integer id.

The log is part of the checkpoint, so a replaced pod replays from ``Last-Event-ID`` too. An id is
never shown to a reader before it is covered by a checkpointed *ceiling*: each checkpoint reserves
ids up to ``ceiling`` and readers see events only up to the last persisted ceiling. A pod that
resumes starts numbering above that ceiling, so an id a reader saw from a lost pod is never reused
for a different event (ids may jump after a restart; they never repeat or go back).
"""

import asyncio
import bisect
from collections.abc import Callable, Sequence
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

    def __init__(self, events: Sequence[Event] = (), *, ceiling: int = 0, reserve: int = 1000) -> None:
        self._events: list[Event] = list(events)
        self._ids: list[int] = [event.id for event in self._events]
        self._ceiling = max(ceiling, self._ids[-1] if self._ids else 0)
        self._next_id = self._ceiling + 1  # above anything a lost pod may have shown
        self._reserve = reserve
        self._subscriptions: set[Subscription] = set()
        # Called when the ids left under the ceiling run low; it should write a checkpoint.
        self.on_low_headroom: Callable[[], None] | None = None

    @property
    def events(self) -> Sequence[Event]:
        return self._events

    @property
    def ceiling(self) -> int:
        """Highest id readers may see: covered by a persisted checkpoint."""
        return self._ceiling

    def next_ceiling(self) -> int:
        """The ceiling the next checkpoint reserves."""
        return self._next_id - 1 + self._reserve

    def emit(self, type_: EventType, data: dict[str, Any]) -> Event:
        event = Event(id=self._next_id, type=type_, data=data)
        self._next_id += 1
        self._events.append(event)
        self._ids.append(event.id)
        if event.id <= self._ceiling:
            for subscription in list(self._subscriptions):
                subscription.offer(event)
        if self._ceiling - event.id < self._reserve // 2 and self.on_low_headroom is not None:
            self.on_low_headroom()
        return event

    def raise_ceiling(self, ceiling: int) -> None:
        """A checkpoint with this ceiling was written: show the events it covers."""
        if ceiling <= self._ceiling:
            return
        start = bisect.bisect_right(self._ids, self._ceiling)
        end = bisect.bisect_right(self._ids, ceiling)
        self._ceiling = ceiling
        for event in self._events[start:end]:
            for subscription in list(self._subscriptions):
                subscription.offer(event)

    def after(self, last_id: int) -> list[Event]:
        """Visible events with an id above ``last_id``, oldest first."""
        start = bisect.bisect_right(self._ids, last_id)
        end = bisect.bisect_right(self._ids, self._ceiling)
        return self._events[start:end]

    def subscribe(self, queue_size: int) -> Subscription:
        subscription = Subscription(self, queue_size)
        self._subscriptions.add(subscription)
        return subscription
