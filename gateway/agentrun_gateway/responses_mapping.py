"""The OpenAI Responses shapes of AgentRuns, without I/O: a create request as a template request, a run as a
Response object, a run's event log as the Responses stream events, and a refusal as an OpenAI error.

Sequence numbers are counted from the run's event log read from its first event, so the same run always gives
the same numbers: a stream resumed with ``starting_after`` replays the log and skips what the reader has.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from agentrun_api import conditions
from agentrun_api.contract import Outcome
from agentrun_api.names import run_name_problem
from agentrun_api.status import Phase
from agentrun_common.sse import SseEvent
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.relay import FINISHED
from agentrun_gateway.run_templates import LABEL_TEMPLATE

JsonObject = dict[str, Any]

RESPONSE_ID_PREFIX: Final = "resp_"
# The request fields this door honours, and the template override each one needs (None: no override needed).
_OVERRIDE_OF: Final[dict[str, str]] = {
    "instructions": "instructions",
    "max_output_tokens": "model.maxOutputTokens",
    "temperature": "model.temperature",
}
_HONOURED: Final = frozenset({"model", "input", "background", "stream", "store", "metadata", *_OVERRIDE_OF})
METADATA_MAX_PAIRS: Final = 16
METADATA_KEY_MAX: Final = 64
METADATA_VALUE_MAX: Final = 512
INPUT_TEXT_SEPARATOR: Final = "\n\n"
METADATA_ANNOTATION: Final = "agentrun.dev/responses-metadata"  # the request's metadata, echoed back as JSON

# How a run's outcome (the runner's `finished` event) or phase and reason (the run's status) read as a Response.
_INCOMPLETE_REASONS: Final[dict[str, str]] = {
    Outcome.MAX_ITERATIONS.value: "max_iterations",
    Outcome.TIMED_OUT.value: "max_execution_time",
    conditions.REASON_TIMED_OUT: "max_execution_time",
    Outcome.TOKEN_BUDGET_EXCEEDED.value: "token_budget",
}
TERMINAL_EVENT_OF_STATUS: Final[dict[str, str]] = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
    "cancelled": "response.cancelled",
}


# --- errors ---------------------------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _param(field_name: str) -> str | None:
    """A runs-API field as the Responses request names it: the template is ``model``, overrides are their own
    fields (``overrides.model.temperature`` is ``temperature``)."""
    if not field_name:
        return None
    if field_name == "template" or field_name.startswith("template "):
        return "model"
    if field_name.startswith("overrides."):
        path = field_name.removeprefix("overrides.")
        return next((name for name, override in _OVERRIDE_OF.items() if override == path), path)
    return field_name


def _snake_case(code: str) -> str:
    """The runs API's CamelCase codes as the OpenAI API writes its codes (TemplateNotFound: template_not_found)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", code).lower()


def openai_error(refusal: RefusalError) -> tuple[int, JsonObject]:
    """A refusal as the OpenAI API answers one: {"error": {message, type, param, code}}. A request the runs API
    finds invalid (422) is a 400 here, as the OpenAI API has it."""
    status = 400 if refusal.status == 422 else refusal.status
    message = f"{refusal.message}. {refusal.fix}" if refusal.fix else refusal.message
    param = _param(refusal.field)
    error = {"message": message, "type": _error_type(status), "param": param, "code": _snake_case(refusal.code)}
    return status, {"error": error}


def _invalid(param: str, message: str, fix: str, code: str = "invalid_value") -> RefusalError:
    return RefusalError(400, code, message, fix=fix, field=param)


# --- requests -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRequest:
    """A checked ``POST /v1/responses`` body, as a template request."""

    template: str
    input: str
    overrides: JsonObject
    metadata: dict[str, str]
    stream: bool


def _input_text(raw: Any) -> str:
    """``input`` as the run's task: a string, or user messages whose content is text only (joined by a blank
    line). Anything else (another role, an image, a file, a previous item) has no place in a run's input."""
    if isinstance(raw, str):
        if not raw.strip():
            raise _invalid("input", "input is empty", "send the task for the agent as input")
        return raw
    if not isinstance(raw, list) or not raw:
        raise _invalid("input", "input must be a string or a list of user messages", "send the task as a string")
    texts: list[str] = []
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise _invalid(where, f"{where} is not a message", "send only user messages with text content")
        if item.get("role") != "user":
            raise _invalid(
                f"{where}.role",
                f"{where}.role is {item.get('role')!r}: a run takes one task from the user",
                "send only role 'user'; put system or developer text in instructions (if the template allows it)",
            )
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise _invalid(f"{where}.content", f"{where}.content must be text", "send a string or input_text parts")
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "input_text" or not isinstance(part.get("text"), str):
                raise _invalid(
                    f"{where}.content[{part_index}]",
                    f"{where}.content[{part_index}] is not an input_text part: a run's input is text only",
                    "send text; put files where the run's tools can fetch them",
                )
            texts.append(part["text"])
    text = INPUT_TEXT_SEPARATOR.join(texts)
    if not text.strip():
        raise _invalid("input", "input holds no text", "send the task for the agent as input")
    return text


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > METADATA_MAX_PAIRS:
        raise _invalid("metadata", f"metadata must be an object of at most {METADATA_MAX_PAIRS} pairs", "send fewer")
    for key, value in raw.items():
        if len(key) > METADATA_KEY_MAX or not isinstance(value, str) or len(value) > METADATA_VALUE_MAX:
            raise _invalid(
                f"metadata.{key}",
                f"metadata keys are strings of at most {METADATA_KEY_MAX} characters, values strings of at most "
                f"{METADATA_VALUE_MAX}",
                "shorten the pair, or send its value as a string",
            )
    return dict(raw)


def create_request(body: Any) -> CreateRequest:
    """Check a create body: every field either honoured or refused by name, never ignored."""
    if not isinstance(body, dict):
        raise _invalid("body", "the request body must be a JSON object", "send a JSON object")
    present = {key: value for key, value in body.items() if value is not None}  # null means "the default"
    for key in present:
        if key not in _HONOURED:
            raise _invalid(
                str(key),
                f"{key} is not supported here: an AgentRun's tools, limits and model settings come from its "
                "template (model names the AgentRunTemplate)",
                f"leave {key} out; the honoured fields are {', '.join(sorted(_HONOURED))}",
                code="unsupported_parameter",
            )
    if present.get("background") is not True:
        raise _invalid(
            "background",
            "only background responses are served: an agent run takes minutes to hours, longer than a request can wait",
            "send background: true, then poll GET /v1/responses/{id} or stream it",
            code="background_required",
        )
    if present.get("store", True) is not True:
        raise _invalid("store", "a background response is always stored (as its AgentRun)", "leave store out")
    model = present.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "model must name an AgentRunTemplate of the namespace", "send the template's name")
    stream = present.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream", "stream must be true or false", "send a boolean")
    if "input" not in present:
        raise _invalid("input", "input is required: the task for the agent", "send input", code="missing_required")
    overrides = {_OVERRIDE_OF[key]: present[key] for key in _OVERRIDE_OF if key in present}
    return CreateRequest(model, _input_text(present["input"]), overrides, _metadata(present.get("metadata")), stream)


def response_id(run: str) -> str:
    return RESPONSE_ID_PREFIX + run


def run_of(response: str) -> str | None:
    """The run a response id names, or None for a string that cannot be one of ours."""
    name = response.removeprefix(RESPONSE_ID_PREFIX)
    if name == response or run_name_problem(name) is not None:
        return None
    return name


# --- responses ------------------------------------------------------------------------------------------------


def _epoch(timestamp: str) -> int:
    if not timestamp:
        return 0
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def _phase_of(run: Mapping[str, Any]) -> Phase | None:
    raw = str((run.get("status") or {}).get("phase") or "")
    return Phase(raw) if raw in set(Phase) else None


@dataclass(frozen=True)
class Ending:
    """How a response ended: its status, and why when it is not completed."""

    status: str
    incomplete_reason: str = ""
    error_code: str = ""
    error_message: str = ""


def ending_of_outcome(outcome: str, message: str) -> Ending:
    """The ending the runner's ``finished`` event reports."""
    if outcome == Outcome.SUCCEEDED.value:
        return Ending("completed")
    if outcome == Outcome.CANCELLED.value:
        return Ending("cancelled")
    if outcome in _INCOMPLETE_REASONS:
        return Ending("incomplete", incomplete_reason=_INCOMPLETE_REASONS[outcome])
    return Ending("failed", error_code=outcome or "RunFailed", error_message=message)


def ending_of_run(run: Mapping[str, Any]) -> Ending | None:
    """The ending the run's status records; None while it runs."""
    status = run.get("status") or {}
    phase, reason, message = _phase_of(run), str(status.get("reason", "")), str(status.get("message", ""))
    if phase is Phase.SUCCEEDED:
        return Ending("completed")
    if phase is Phase.CANCELLED:
        return Ending("cancelled")
    if phase is Phase.TIMED_OUT or (phase is Phase.FAILED and reason in _INCOMPLETE_REASONS):
        return Ending("incomplete", incomplete_reason=_INCOMPLETE_REASONS.get(reason, "max_execution_time"))
    if phase is Phase.FAILED:
        return Ending("failed", error_code=reason or "RunFailed", error_message=message)
    return None


def status_of(run: Mapping[str, Any]) -> str:
    """queued until the run's runner starts, in_progress while it runs (or waits: suspended, for an approval)."""
    ending = ending_of_run(run)
    if ending is not None:
        return ending.status
    return "queued" if _phase_of(run) in (None, Phase.PENDING) else "in_progress"


def output_message(item_id: str, text: str, status: str = "completed") -> JsonObject:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def result_item_id(run: str) -> str:
    return f"msg_{run}_result"


def response_object(
    run: Mapping[str, Any], status: str, ending: Ending | None = None, output: list[JsonObject] | None = None
) -> JsonObject:
    """The Response object of a run; ``output`` defaults to the run's result summary as one message."""
    metadata, spec, run_status = run.get("metadata") or {}, run.get("spec") or {}, run.get("status") or {}
    name = str(metadata.get("name", ""))
    usage = run_status.get("usage") or {}
    result = run_status.get("result") or {}
    if output is None:
        output = [output_message(result_item_id(name), str(result["summary"]))] if result.get("summary") else []
    model = spec.get("model") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "id": response_id(name),
        "object": "response",
        "created_at": _epoch(str(metadata.get("creationTimestamp", ""))),
        "status": status,
        "background": True,
        "model": (metadata.get("labels") or {}).get(LABEL_TEMPLATE, ""),
        "instructions": spec.get("instructions"),
        "max_output_tokens": model.get("maxOutputTokens"),
        "temperature": model.get("temperature"),
        "top_p": None,
        "metadata": json.loads(annotations.get(METADATA_ANNOTATION, "{}")),
        "output": output,
        "error": {"code": ending.error_code, "message": ending.error_message}
        if ending is not None and ending.status == "failed"
        else None,
        "incomplete_details": {"reason": ending.incomplete_reason}
        if ending is not None and ending.status == "incomplete"
        else None,
        "usage": {
            "input_tokens": int(usage.get("promptTokens", 0)),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": int(usage.get("completionTokens", 0)),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": int(usage.get("totalTokens", 0)),
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "store": True,
    }


def run_response(run: Mapping[str, Any]) -> JsonObject:
    """What GET /v1/responses/{id} answers for a run."""
    ending = ending_of_run(run)
    return response_object(run, ending.status if ending else status_of(run), ending)


# --- the stream -----------------------------------------------------------------------------------------------


@dataclass
class _OpenItem:
    item_id: str
    output_index: int
    text: str = ""


@dataclass
class StreamTranslator:
    """A run's events (from its first) as Responses stream events, numbered from 0.

    Each model answer streamed as tokens is one output message (closed when the next step starts); the run's
    result is the last message. ``run`` is the AgentRun the response snapshots are made of: refresh it before
    the end so the final snapshot carries the final usage."""

    run: JsonObject
    sequence: int = 0
    started: bool = False
    ended: bool = False
    output: list[JsonObject] = field(default_factory=list)
    _open: _OpenItem | None = None

    @property
    def name(self) -> str:
        return str((self.run.get("metadata") or {}).get("name", ""))

    def _event(self, kind: str, **payload: Any) -> JsonObject:
        event = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return event

    def _snapshot(self, status: str, ending: Ending | None = None) -> JsonObject:
        return response_object(self.run, status, ending, output=list(self.output))

    def opening(self) -> list[JsonObject]:
        """The first two events: created and queued (the run was queued when it was created)."""
        return [
            self._event("response.created", response=self._snapshot("queued")),
            self._event("response.queued", response=self._snapshot("queued")),
        ]

    def translate(self, event: SseEvent) -> list[JsonObject]:
        """The Responses events one run event stands for (none for bookkeeping such as checkpoints)."""
        if self.ended:
            return []
        events: list[JsonObject] = []
        if not self.started:
            self.started = True
            events.append(self._event("response.in_progress", response=self._snapshot("in_progress")))
        data = _data(event)
        if event.event == "token":
            events.extend(self._delta(str(data.get("text", ""))))
        elif event.event == "iteration":
            events.extend(self._close())
        elif event.event == FINISHED:
            events.extend(self._close())
            events.extend(self._finish(data))
        return events

    def _delta(self, text: str, item_id: str = "") -> list[JsonObject]:
        """Text of the open message; the first opens one (its id ``item_id``, or one of its position)."""
        events: list[JsonObject] = []
        if self._open is None:
            index = len(self.output)
            self._open = _OpenItem(item_id or f"msg_{self.name}_{index}", index)
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item=output_message(self._open.item_id, "", "in_progress") | {"content": []},
                )
            )
            events.append(self._part_event("response.content_part.added", ""))
        self._open.text += text
        item = self._open
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item.item_id,
                output_index=item.output_index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _part_event(self, kind: str, text: str) -> JsonObject:
        assert self._open is not None
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return self._event(
            kind, item_id=self._open.item_id, output_index=self._open.output_index, content_index=0, part=part
        )

    def _close(self) -> list[JsonObject]:
        item = self._open
        if item is None:
            return []
        events = [
            self._event(
                "response.output_text.done",
                item_id=item.item_id,
                output_index=item.output_index,
                content_index=0,
                text=item.text,
                logprobs=[],
            ),
            self._part_event("response.content_part.done", item.text),
        ]
        message = output_message(item.item_id, item.text)
        events.append(self._event("response.output_item.done", output_index=item.output_index, item=message))
        self.output.append(message)
        self._open = None
        return events

    def _finish(self, data: Mapping[str, Any]) -> list[JsonObject]:
        """The result as the last message, then the terminal event. The gateway's own closing event (the run
        ended without the runner's `finished` reaching it) carries the phase; the run's status says the rest."""
        if "outcome" in data:
            ending = ending_of_outcome(str(data["outcome"]), str(data.get("message", "")))
        else:
            ending = ending_of_run(self.run) or Ending("failed", error_code=str(data.get("reason") or "RunEnded"))
        result = data.get("result") or (self.run.get("status") or {}).get("result") or {}
        events: list[JsonObject] = []
        summary = str(result.get("summary", "")) if isinstance(result, Mapping) else ""
        if summary:
            events.extend(self._delta(summary, result_item_id(self.name)))
            events.extend(self._close())
        self.ended = True
        snapshot = self._snapshot(ending.status, ending)
        events.append(self._event(TERMINAL_EVENT_OF_STATUS[ending.status], response=snapshot))
        return events


def _data(event: SseEvent) -> JsonObject:
    try:
        data = json.loads(event.data)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
