"""The run's state, and the delta records a checkpoint store appends.

A record holds only what changed since the previous record (new messages, new tool-call log
entries, new events, workspace files written) plus a few small counters, so a checkpoint write is
proportional to what is new, not to the run's history. Folding the records in order rebuilds the state.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrun_common.eventlog.events import Event
from agentrun_common.eventlog.records import check_follows

Message = dict[str, Any]


@dataclass
class ToolCallRecord:
    """One executed tool call; its output is reused on resume instead of running the call again."""

    key: str  # idempotency key {run uid}:{step}:{call index}
    name: str
    arguments: str
    output: str
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "arguments": self.arguments, "output": self.output, "ok": self.ok}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "ToolCallRecord":
        return cls(
            key=raw["key"], name=raw["name"], arguments=raw["arguments"], output=raw["output"], ok=bool(raw["ok"])
        )


@dataclass
class Counters:
    """Small values every record carries whole."""

    step: int = 0  # model calls answered
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_seconds: float = 0.0  # execution time used, across restarts
    queue_wait_last: float = 0.0
    queue_wait_max: float = 0.0
    queue_wait_total: float = 0.0
    # The iteration whose model call was sent (past any throttle queue) and not answered yet, or 0.
    call_in_flight: int = 0
    # Model calls a lost pod had in flight. Each is counted in the tokens: prompt as the retry's
    # prompt (the same messages), completion as the streamed tokens logged before the loss; see
    # docs/checkpoints.md.
    interrupted_calls: int = 0
    unbilled_prompts: int = 0  # interrupted calls whose prompt the retry's answer has yet to price
    started_at: str | None = None
    outcome: str | None = None
    outcome_message: str = ""
    result_ref: str | None = None
    result_bytes: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RunState:
    messages: list[Message] = field(default_factory=list)
    tool_log: dict[str, ToolCallRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # workspace path -> text
    counters: Counters = field(default_factory=Counters)
    records: int = 0  # records folded in; the next record's sequence number
    # Ids a checkpoint written before events were bound to the log may have shown (it reserved ids
    # ahead); the log numbers above them.
    legacy_event_ceiling: int = 0
    result: str | None = None
    # What the last record covered; everything past these marks goes into the next delta. Messages,
    # tool-log entries and events are only ever appended, so a count marks where the new ones start
    # and a delta costs what is new, not what is old.
    _saved_messages: int = 0
    _saved_events: int = 0
    _saved_tools: int = 0
    _dirty_files: set[str] = field(default_factory=set)
    _saved_result: bool = False

    def note_file_written(self, path: str, text: str) -> None:
        self.files[path] = text
        self._dirty_files.add(path)

    def delta(self, events: Sequence[Event]) -> dict[str, Any]:
        """The next record: what changed since the last one. ``mark_saved`` once it is written."""
        return {
            "seq": self.records,
            "messagesFrom": self._saved_messages,
            "messages": self.messages[self._saved_messages :],
            "tools": [r.to_json() for r in itertools.islice(self.tool_log.values(), self._saved_tools, None)],
            "events": [e.to_json() for e in events[self._saved_events :]],
            "files": {path: self.files[path] for path in sorted(self._dirty_files)},
            "counters": vars(self.counters).copy(),
            "result": None if self._saved_result else self.result,
        }

    def mark_saved(self, record: dict[str, Any]) -> None:
        self.records = record["seq"] + 1
        self._saved_messages = record["messagesFrom"] + len(record["messages"])
        self._saved_events += len(record["events"])
        self._saved_tools += len(record["tools"])
        self._dirty_files.difference_update(record["files"])
        self._saved_result = self._saved_result or record["result"] is not None

    def apply(self, record: dict[str, Any]) -> None:
        """Fold one loaded record into the state; raises ValueError when it does not follow on."""
        check_follows(record, self.records, len(self.messages))
        self.messages.extend(record["messages"])
        for raw in record["tools"]:
            tool = ToolCallRecord.from_json(raw)
            self.tool_log[tool.key] = tool
        self.events.extend(Event.from_json(raw) for raw in record["events"])
        self.files.update(record["files"])
        counters = dict(record["counters"])
        self.legacy_event_ceiling = max(self.legacy_event_ceiling, int(counters.pop("event_id_ceiling", 0)))
        self.counters = Counters(**counters)
        if record.get("result") is not None:
            self.result = record["result"]
        self.mark_saved(record)
        self._saved_events = len(self.events)
        self._saved_tools = len(self.tool_log)
