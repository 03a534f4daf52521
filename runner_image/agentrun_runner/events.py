"""The run's event log: every event the stream serves, with a monotonic integer id.

The log is part of the checkpoint, and a reader sees an event only once a checkpoint record that
holds it is written: what any reader saw is exactly what a replay from the log gives, through any
pod loss. An event emitted but not yet written is lost with its pod unseen, so a replacement pod
numbers its events right after the last logged one and no id ever names two different events.
Writing is the agent's job: ``on_pending`` tells it there are events to write, ``publish`` that
they are written. The ``Event`` itself is ``agentrun_common.eventlog.events``: the stream gateway replays it.
"""

import asyncio
import bisect
from collections.abc import Callable, Sequence
from typing import Any

from agentrun_common.eventlog.events import Event, EventType


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

    def __init__(self, logged: Sequence[Event] = (), *, numbered_after: int = 0) -> None:
        """``logged``: the events the checkpoint holds. ``numbered_after``: ids up to here were used
        already (a checkpoint written before ids were bound to the log reserved ids ahead)."""
        self._events: list[Event] = list(logged)
        self._ids: list[int] = [event.id for event in self._events]
        self._published = self._ids[-1] if self._ids else 0
        self._next_id = max(self._published, numbered_after) + 1
        self._subscriptions: set[Subscription] = set()
        # Called after each emit while events wait to be written; it should schedule a checkpoint.
        self.on_pending: Callable[[], None] | None = None

    @property
    def events(self) -> Sequence[Event]:
        return self._events

    @property
    def published(self) -> int:
        """Highest id readers may see: held by a written checkpoint record."""
        return self._published

    @property
    def pending(self) -> bool:
        return bool(self._ids) and self._ids[-1] > self._published

    def emit(self, type_: EventType, data: dict[str, Any]) -> Event:
        event = Event(id=self._next_id, type=type_, data=data)
        self._next_id += 1
        self._events.append(event)
        self._ids.append(event.id)
        if self.on_pending is not None:
            self.on_pending()
        return event

    def publish(self, up_to: int) -> None:
        """A checkpoint record holding the events up to this id was written: show them."""
        if up_to <= self._published:
            return
        start = bisect.bisect_right(self._ids, self._published)
        end = bisect.bisect_right(self._ids, up_to)
        self._published = up_to
        for event in self._events[start:end]:
            for subscription in list(self._subscriptions):
                subscription.offer(event)

    def after(self, last_id: int) -> list[Event]:
        """Published events with an id above ``last_id``, oldest first."""
        start = bisect.bisect_right(self._ids, last_id)
        end = bisect.bisect_right(self._ids, self._published)
        return self._events[start:end]

    def subscribe(self, queue_size: int) -> Subscription:
        subscription = Subscription(self, queue_size)
        self._subscriptions.add(subscription)
        return subscription
