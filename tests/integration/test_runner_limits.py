"""Every limit of a run ends it with its own outcome and a clear message.

The runner's main coroutine runs in the test's loop against the scripted model server over real
HTTP, through the real openai SDK; the checkpoint goes to a PVC-style directory in tmp.
"""

import socket
import time
from pathlib import Path

import pytest

from agentrun_api.contract import EXIT_OUTCOME_RECORDED, Outcome
from tests.harness.model_server import (
    Answer,
    Failure,
    Hang,
    ModelServer,
    Page,
    by_turn,
    call,
    in_order,
    research_script,
)
from tests.harness.runner import API_KEY, make_config, make_spec, run_in_process

pytestmark = pytest.mark.integration

FOREVER_TOOLS = by_turn([Answer(tool_calls=[call("list_files")])])
# What a base URL that leads to a web site instead of its API gets: a page, with a 200.
SIGN_IN_PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n  <head>\n    <title>Sign in \u2013 Example Portal</title>\n  </head>\n'
    '  <body>\r\n\t<form action="/login">' + "<p>filler</p>" * 2000 + "</form>\n  </body>\n</html>\n"
)


async def test_research_run_succeeds_and_persists_result_before_outcome(tmp_path: Path) -> None:
    async with ModelServer(research_script()) as model:
        config = make_config(make_spec(model.base_url), tmp_path)
        run = await run_in_process(config, tmp_path)

    assert run.exit_code == EXIT_OUTCOME_RECORDED
    assert run.progress.outcome is Outcome.SUCCEEDED
    assert run.progress.result is not None
    assert run.progress.result.ref == "pvc/demo-ckpt/result.txt"
    stored = (tmp_path / "checkpoint" / "result.txt").read_text()
    assert stored == "The report is in report.md: vendor B is cheapest, vendor A is fastest."
    assert run.progress.result.summary == stored
    assert run.progress.iteration == 5
    assert (tmp_path / "workspace" / "report.md").read_text().startswith("# Report")
    assert run.state.files["report.md"].startswith("# Report")
    assert run.state.counters.outcome == "Succeeded"
    assert run.progress.usage.total_tokens == run.state.counters.total_tokens > 0
    # The key went to the endpoint as a bearer token and nowhere into the state.
    assert model.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in (tmp_path / "checkpoint" / "checkpoint.log").read_text()
    assert API_KEY not in (tmp_path / "progress.json").read_text()


async def test_max_iterations_ends_run_with_its_own_reason(tmp_path: Path) -> None:
    async with ModelServer(FOREVER_TOOLS) as model:
        config = make_config(make_spec(model.base_url, maxIterations=3), tmp_path)
        run = await run_in_process(config, tmp_path)

    assert run.progress.outcome is Outcome.MAX_ITERATIONS
    assert "maxIterations (3)" in run.progress.message
    assert len(model.requests) == 3
    assert run.progress.iteration == 3
    assert run.progress.result is None


async def test_token_budget_ends_run_when_spent(tmp_path: Path) -> None:
    async with ModelServer(FOREVER_TOOLS) as model:
        config = make_config(make_spec(model.base_url, tokenBudget=400, maxIterations=50), tmp_path)
        run = await run_in_process(config, tmp_path)

    assert run.progress.outcome is Outcome.TOKEN_BUDGET_EXCEEDED
    assert run.progress.usage.total_tokens >= 400
    assert "tokenBudget of 400" in run.progress.message
    # Each call asked for no more than the budget left.
    assert all(r.body["max_completion_tokens"] <= 400 for r in model.requests)
    assert len(model.requests) < 50


async def test_output_cap_is_sent_as_max_completion_tokens_which_reasoning_models_take(tmp_path: Path) -> None:
    async with ModelServer(research_script(), refuses_max_tokens=True) as model:
        spec = make_spec(model.base_url, model={"maxOutputTokens": 800})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.SUCCEEDED, run.progress.message
    assert [r.body["max_completion_tokens"] for r in model.requests] == [800] * 5
    assert all("max_tokens" not in r.body for r in model.requests)


async def test_hung_endpoint_cannot_hold_run_past_its_budget(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Hang()])) as model:
        spec = make_spec(model.base_url, maxExecutionTime="2s", model={"requestTimeout": "60s"})
        config = make_config(spec, tmp_path)
        started = time.monotonic()
        run = await run_in_process(config, tmp_path)
        took = time.monotonic() - started

    assert run.progress.outcome is Outcome.TIMED_OUT
    assert "during a model call" in run.progress.message
    assert len(model.requests) == 1
    assert took < 10, "the outer deadline, not the 60 s request timeout, ended the call"


async def test_request_timeout_is_retried_then_fails_the_run(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Hang()])) as model:
        spec = make_spec(model.base_url, model={"requestTimeout": "1s", "maxRetries": 1})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.MODEL_FAILED
    assert "after 2 attempt(s)" in run.progress.message
    assert "requestTimeout (1s)" in run.progress.message
    assert len(model.requests) == 2


async def test_soft_deadline_margin_ends_the_run_early(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Answer(tool_calls=[call("list_files")], delay=0.3)])) as model:
        spec = make_spec(model.base_url, maxExecutionTime="3s", maxIterations=100)
        config = make_config(spec, tmp_path, soft_deadline_margin_seconds=2.0)
        run = await run_in_process(config, tmp_path)

    assert run.progress.outcome is Outcome.TIMED_OUT
    assert run.progress.elapsed_seconds < 2.9
    assert run.state.counters.outcome == "TimedOut"


async def test_a_budget_shorter_than_the_margin_still_leaves_time_to_work(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Answer(tool_calls=[call("list_files")], delay=0.3)])) as model:
        spec = make_spec(model.base_url, maxExecutionTime="4s", maxIterations=100)
        run = await run_in_process(make_config(spec, tmp_path, soft_deadline_margin_seconds=10.0), tmp_path)

    assert run.progress.outcome is Outcome.TIMED_OUT
    assert len(model.requests) >= 3, "three quarters of the 4 s budget went to work"
    assert 2.5 <= run.progress.elapsed_seconds < 4.0


async def test_retries_on_429_and_5xx_honour_retry_after(tmp_path: Path) -> None:
    script = in_order([Failure(429, retry_after="1"), Failure(503), Answer("fine")])
    async with ModelServer(script) as model:
        spec = make_spec(model.base_url, model={"maxRetries": 2})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path, retry_base_seconds=0.01)

    assert run.progress.outcome is Outcome.SUCCEEDED
    assert len(model.requests) == 3
    first, second, third = (r.received_at for r in model.requests)
    assert second - first >= 1.0, "Retry-After: 1 was honoured"
    assert third - second < 1.0, "without Retry-After the (short) backoff applies"


async def test_retries_exhausted_on_5xx_fail_the_run(tmp_path: Path) -> None:
    async with ModelServer(in_order([Failure(500)])) as model:
        spec = make_spec(model.base_url, model={"maxRetries": 3})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path, retry_base_seconds=0.01)

    assert run.progress.outcome is Outcome.MODEL_FAILED
    assert "after 4 attempt(s): HTTP 500" in run.progress.message
    assert len(model.requests) == 4


async def test_retry_after_past_the_budget_fails_at_once(tmp_path: Path) -> None:
    async with ModelServer(in_order([Failure(429, retry_after="120"), Answer("late")])) as model:
        spec = make_spec(model.base_url, maxExecutionTime="30s")
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.MODEL_FAILED
    assert "would pass the run's time budget" in run.progress.message
    assert len(model.requests) == 1


@pytest.mark.parametrize(
    ("status", "says"),
    [(401, "API key was refused"), (404, "does not know model 'scripted-model'"), (400, "a retry cannot fix it")],
)
async def test_unfixable_4xx_ends_run_at_once_as_rejected(tmp_path: Path, status: int, says: str) -> None:
    async with ModelServer(in_order([Failure(status), Answer("never")])) as model:
        spec = make_spec(
            model.base_url,
            model={"maxRetries": 5, "apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        )
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.MODEL_REJECTED
    assert says in run.progress.message
    assert f"answered {status}" in run.progress.message
    assert len(model.requests) == 1, "no retry of a request no retry can fix"
    assert API_KEY not in run.progress.message


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
async def test_a_web_page_for_an_answer_ends_the_run_at_once_naming_the_base_url(tmp_path: Path, stream: bool) -> None:
    async with ModelServer(in_order([Page(SIGN_IN_PAGE), Answer("never")])) as model:
        spec = make_spec(model.base_url, model={"maxRetries": 5, "stream": stream})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.exit_code == EXIT_OUTCOME_RECORDED
    assert run.progress.outcome is Outcome.MODEL_REJECTED
    message = run.progress.message
    assert "model endpoint answered 200 with text/html; charset=utf-8, not a chat completion" in message
    assert f"check spec.model.baseURL ({model.base_url})" in message
    assert (
        'the answer began \'<!DOCTYPE html> <html lang="en"> <head> <title>Sign in \u2013 Example Portal</title>'
        in message
    )
    assert message.isprintable(), "one line, no control characters"
    assert "<p>filler</p>" * 10 not in message, "only the start of the page"
    assert len(model.requests) == 1, "no retry: the endpoint would answer the same again"


@pytest.mark.parametrize(
    ("stream", "page", "says"),
    [
        (
            False,
            Page("upstream busy", content_type="application/json"),
            "answered 200 with application/json, not a chat completion",
        ),
        (
            False,
            Page('{"detail": "Not Found"}', content_type="application/json"),
            "answered 200 with application/json, not a chat completion",
        ),
        (
            True,
            Page("data: upstream busy\n\n", content_type="text/event-stream"),
            "answered 200 with text/event-stream, but an event in it is not a chat completion chunk",
        ),
        (
            True,
            Page('data: {"status": "queued"}\n\n', content_type="text/event-stream"),
            "answered 200 with text/event-stream, but an event in it is not a chat completion chunk",
        ),
    ],
    ids=["json-type-not-json", "json-without-choices", "event-not-json", "event-without-choices"],
)
async def test_an_answer_that_is_not_a_chat_completion_ends_the_run_at_once(
    tmp_path: Path, stream: bool, page: Page, says: str
) -> None:
    async with ModelServer(in_order([page, Answer("never")])) as model:
        spec = make_spec(model.base_url, model={"maxRetries": 5, "stream": stream})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.MODEL_REJECTED
    assert says in run.progress.message
    assert f"check spec.model.baseURL ({model.base_url})" in run.progress.message
    assert len(model.requests) == 1


async def test_an_unreachable_endpoint_fails_the_run_naming_its_host(tmp_path: Path) -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound but not listening: every connection to it is refused
        port = reserved.getsockname()[1]
        spec = make_spec(f"http://127.0.0.1:{port}/v1", model={"maxRetries": 1})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.MODEL_FAILED
    assert f"after 2 attempt(s): could not reach 127.0.0.1:{port}: " in run.progress.message


async def test_throttle_queue_timeout_ends_run_with_queue_depth(tmp_path: Path) -> None:
    async with ModelServer(FOREVER_TOOLS) as model:
        spec = make_spec(
            model.base_url,
            throttle={"enabled": True, "requestsPerMinute": 1, "maxSecondsToWaitInQueue": 1},
        )
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.THROTTLE_QUEUE_TIMEOUT
    assert "queue depth 1" in run.progress.message
    assert "maxSecondsToWaitInQueue=1" in run.progress.message
    assert len(model.requests) == 1
    assert run.progress.queue_wait.max_seconds >= 1.0
    assert run.progress.queue_wait.total_seconds >= run.progress.queue_wait.max_seconds


async def test_streamed_answers_are_assembled_and_counted(tmp_path: Path) -> None:
    script = by_turn(
        [
            Answer(content="Let me write.", tool_calls=[call("write_file", path="a.txt", content="x" * 40)]),
            Answer(content="All done now."),
        ]
    )
    async with ModelServer(script) as model:
        spec = make_spec(model.base_url, model={"stream": True})
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.SUCCEEDED
    assert all(r.body["stream"] is True for r in model.requests)
    assert (tmp_path / "workspace" / "a.txt").read_text() == "x" * 40
    tokens = [e.data["text"] for e in run.state.events if e.type == "token"]
    assert "".join(tokens).split() == ["Let", "me", "write.", "All", "done", "now."]
    assert run.progress.usage.completion_tokens > 0
    assert run.state.messages[-1] == {"role": "assistant", "content": "All done now. "}


async def test_a_large_result_is_stored_whole_and_only_summarized_in_progress(tmp_path: Path) -> None:
    answer = "".join(f"line {n}: findings\n" for n in range(5000))
    async with ModelServer(by_turn([Answer(answer)])) as model:
        run = await run_in_process(make_config(make_spec(model.base_url), tmp_path), tmp_path)

    assert run.progress.result is not None
    assert run.progress.result.summary == answer[:2048]
    assert run.progress.result.bytes == len(answer.encode())
    assert (tmp_path / "checkpoint" / "result.txt").read_text() == answer
    assert len((tmp_path / "progress.json").read_text()) < 4096


async def test_a_queue_wait_longer_than_the_budget_ends_the_run_timed_out(tmp_path: Path) -> None:
    async with ModelServer(FOREVER_TOOLS) as model:
        spec = make_spec(
            model.base_url,
            maxExecutionTime="2s",
            throttle={"enabled": True, "requestsPerMinute": 1, "maxSecondsToWaitInQueue": 600},
        )
        run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.TIMED_OUT
    assert "ran out waiting for a throttle permit" in run.progress.message
    assert "queue depth 1" in run.progress.message
    assert len(model.requests) == 1
