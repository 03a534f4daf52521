"""The Responses door's pure mapping: a create body as a template request (each field honoured or refused by
name), a run as a Response, a run's event log as numbered Responses stream events, refusals as OpenAI errors."""

import json
from typing import Any

import pytest
from openai.types.responses import Response

from agentrun_common.sse import SseEvent
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.responses_mapping import (
    StreamTranslator,
    create_request,
    openai_error,
    response_id,
    run_of,
    run_response,
)

BASE = {"model": "research", "input": "Compare three vendors.", "background": True}


def refused(body: Any) -> RefusalError:
    with pytest.raises(RefusalError) as caught:
        create_request(body)
    return caught.value


def test_a_background_request_becomes_a_template_request_with_the_overrides_it_sets() -> None:
    checked = create_request(
        BASE | {"instructions": "Be brief.", "temperature": 0.2, "max_output_tokens": 400, "metadata": {"team": "a"}}
    )
    assert (checked.template, checked.input, checked.stream) == ("research", "Compare three vendors.", False)
    assert checked.overrides == {"instructions": "Be brief.", "model.temperature": 0.2, "model.maxOutputTokens": 400}
    assert checked.metadata == {"team": "a"}
    assert create_request(BASE | {"temperature": None}).overrides == {}  # null is the default, not a value


def test_user_messages_of_text_are_joined_and_anything_else_is_refused_by_its_place() -> None:
    messages = [
        {"role": "user", "content": "First part."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Second part."}]},
    ]
    assert create_request(BASE | {"input": messages}).input == "First part.\n\nSecond part."
    assert refused(BASE | {"input": [{"role": "system", "content": "x"}]}).field == "input[0].role"
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]
    assert refused(BASE | {"input": image}).field == "input[0].content[0]"
    assert refused(BASE | {"input": [{"type": "function_call_output", "output": "1"}]}).field == "input[0]"
    assert refused(BASE | {"input": "  "}).field == "input"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({k: v for k, v in BASE.items() if k != "background"}, "background", "background_required"),
        (BASE | {"background": False}, "background", "background_required"),
        (BASE | {"tools": [{"type": "web_search"}]}, "tools", "unsupported_parameter"),
        (BASE | {"top_p": 0.5}, "top_p", "unsupported_parameter"),
        (BASE | {"previous_response_id": "resp_x"}, "previous_response_id", "unsupported_parameter"),
        (BASE | {"store": False}, "store", "invalid_value"),
        (BASE | {"metadata": {"k": 1}}, "metadata.k", "invalid_value"),
        ({"model": "research", "background": True}, "input", "missing_required"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(body: Any, param: str, code: str) -> None:
    refusal = refused(body)
    status, answer = openai_error(refusal)
    assert status == 400
    assert answer["error"]["param"] == param
    assert answer["error"]["code"] == code
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"]


def test_runs_api_refusals_name_the_responses_field() -> None:
    override = RefusalError(422, "OverrideNotAllowed", "no", fix="leave it out", field="overrides.model.temperature")
    assert openai_error(override)[1]["error"]["param"] == "temperature"
    template = RefusalError(422, "TemplateNotFound", "no template", field="template")
    status, answer = openai_error(template)
    assert (status, answer["error"]["param"], answer["error"]["code"]) == (400, "model", "template_not_found")
    limited = RefusalError(429, "TooManyRuns", "slow down")
    assert openai_error(limited)[1]["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "too_many_runs",
    }


def test_a_response_id_names_a_run_and_nothing_else() -> None:
    assert run_of(response_id("run-abc")) == "run-abc"
    for foreign in ("run-abc", "resp_", "resp_../x", "resp_UPPER", "msg_run-abc"):
        assert run_of(foreign) is None


def run(phase: str | None = None, reason: str = "", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "run-abc",
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "labels": {"agentrun.dev/template": "research"},
            "annotations": {"agentrun.dev/responses-metadata": '{"team": "a"}'},
        },
        "spec": {"model": {"name": "m", "temperature": 0.2}, "instructions": "Be brief."},
        "status": {"phase": phase, "reason": reason, **status} if phase else {},
    }


@pytest.mark.parametrize(
    ("phase", "reason", "status", "details"),
    [
        (None, "", "queued", None),
        ("Pending", "", "queued", None),
        ("Running", "", "in_progress", None),
        ("WaitingForApproval", "", "in_progress", None),
        ("Succeeded", "Succeeded", "completed", None),
        ("Cancelled", "Cancelled", "cancelled", None),
        ("Failed", "MaxIterationsReached", "incomplete", {"reason": "max_iterations"}),
        ("TimedOut", "MaxExecutionTimeExceeded", "incomplete", {"reason": "max_execution_time"}),
        ("Failed", "ModelRequestRejected", "failed", None),
    ],
)
def test_a_runs_phase_is_a_response_status(
    phase: str | None, reason: str, status: str, details: dict[str, str] | None
) -> None:
    answer = run_response(run(phase, reason, message="the model said 401"))
    assert answer["status"] == status
    assert answer["incomplete_details"] == details
    assert answer["error"] == ({"code": reason, "message": "the model said 401"} if status == "failed" else None)


def test_a_finished_run_reads_as_the_sdks_response_with_its_result_and_usage() -> None:
    finished = run(
        "Succeeded",
        "Succeeded",
        result={"summary": "Vendor B.", "ref": "configmap/x#result", "bytes": 9},
        usage={"promptTokens": 10, "completionTokens": 5, "totalTokens": 15},
    )
    response = Response.model_validate(run_response(finished))
    assert response.id == "resp_run-abc"
    assert response.output_text == "Vendor B."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.total_tokens) == (10, 15)
    assert (response.model, response.metadata, response.temperature) == ("research", {"team": "a"}, 0.2)
    assert response.created_at == 1767323045


def log_of_a_run() -> list[SseEvent]:
    events = [
        ("iteration", {"iteration": 1}),
        ("token", {"iteration": 1, "text": "Look"}),
        ("token", {"iteration": 1, "text": "ing."}),
        ("tool_call", {"key": "k", "name": "http_fetch", "arguments": "{}"}),
        ("tool_result", {"key": "k", "name": "http_fetch", "ok": True, "output": "x"}),
        ("checkpoint", {"iteration": 1}),
        ("iteration", {"iteration": 2}),
        (
            "finished",
            {"outcome": "Succeeded", "message": "", "result": {"summary": "Vendor B.", "ref": "", "bytes": 9}},
        ),
    ]
    return [SseEvent(kind, json.dumps(data), str(index + 1)) for index, (kind, data) in enumerate(events)]


def translated(translator: StreamTranslator, log: list[SseEvent]) -> list[dict[str, Any]]:
    events = translator.opening()
    for event in log:
        events.extend(translator.translate(event))
    return events


def test_the_stream_numbers_every_event_from_zero_the_same_way_on_every_read() -> None:
    events = translated(StreamTranslator(run("Running")), log_of_a_run())
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events == translated(StreamTranslator(run("Running")), log_of_a_run())
    assert [event["type"] for event in events] == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    completed = Response.model_validate(events[-1]["response"])
    assert completed.status == "completed"
    assert [item.id for item in completed.output] == ["msg_run-abc_0", "msg_run-abc_result"]
    assert completed.output_text == "Looking.Vendor B."


def test_the_gateways_own_closing_event_ends_the_stream_with_the_runs_status() -> None:
    translator = StreamTranslator(run("Cancelled", "Cancelled"))
    translator.opening()
    closing = SseEvent("finished", json.dumps({"phase": "Cancelled", "reason": "RunEnded", "replay": "complete"}))
    events = translator.translate(closing)
    assert [event["type"] for event in events] == ["response.in_progress", "response.cancelled"]
    assert events[-1]["response"]["status"] == "cancelled"
    assert translator.translate(closing) == []  # nothing after the end
