"""The runner's event stream end to end: tokens relayed, replay after a reconnect and after the
runner process was replaced (the event log is part of the checkpoint), and the linger after the end.
Read with httpx-sse from a real runner subprocess."""

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from agentrun_api.contract import EXIT_INVALID_CONFIG, EXIT_OUTCOME_RECORDED
from tests.harness.model_server import Answer, ModelServer, by_turn, call
from tests.harness.runner import API_KEY, STREAM_TOKEN, RunnerProcess, make_config, make_spec, read_progress, runner_env
from tests.harness.sse_client import dispatched_events

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {STREAM_TOKEN}"}
SCRIPT = by_turn(
    [Answer(content=f"step {i} thinking", tool_calls=[call("list_files")], delay=0.25) for i in range(6)]
    + [Answer(content="all done", delay=0.25)]
)
STREAMING: dict[str, Any] = {"streaming": {"enabled": True, "heartbeatInterval": "1s"}, "model": {"stream": True}}


async def follow(port: int, last_id: str | None, stop_after_checkpoint: int | None = None) -> list[ServerSentEvent]:
    """Read until `finished` (or until a checkpoint event of that iteration), from ``last_id``."""
    headers = dict(AUTH)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    seen: list[ServerSentEvent] = []
    async with (
        httpx.AsyncClient(timeout=15) as client,
        aconnect_sse(client, "GET", f"http://127.0.0.1:{port}/events", headers=headers) as source,
    ):
        async for event in dispatched_events(source):
            seen.append(event)
            if event.event == "finished":
                break
            if (
                stop_after_checkpoint is not None
                and event.event == "checkpoint"
                and event.json()["iteration"] >= stop_after_checkpoint
            ):
                break
    return seen


async def test_stream_replays_after_reconnect_and_after_the_runner_was_replaced(tmp_path: Path) -> None:
    async with ModelServer(SCRIPT) as model:
        config = make_config(make_spec(model.base_url, **STREAMING), tmp_path)
        env = runner_env(tmp_path, config, {"AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "3"})

        first_pod = await RunnerProcess(env).start()
        early = await follow(await first_pod.stream_port(), None, stop_after_checkpoint=1)
        # A plain reconnect to the same pod resumes after the last id seen.
        before_kill = await follow(await first_pod.stream_port(), early[-1].id, stop_after_checkpoint=3)
        first_pod.kill()
        await first_pod.wait()

        second_pod = await RunnerProcess(env).start()
        port = await second_pod.stream_port()
        after = await follow(port, before_kill[-1].id)
        # A reader arriving late (during the linger) gets the whole run, first pod's events included.
        everything = await follow(port, None)
        assert await second_pod.wait() == EXIT_OUTCOME_RECORDED

    ids = [int(e.id) for e in early + before_kill + after]
    assert ids == sorted(set(ids)), "ids only ever increase across reconnects and the restart"
    assert ids[0] == 1
    assert int(before_kill[0].id) == int(early[-1].id) + 1
    # After the restart the reader gets exactly the replaced pod's log past its id: the persisted
    # events it had not seen, then new ones numbered above anything the lost pod could have shown.
    seen_up_to = int(before_kill[-1].id)
    assert [(e.id, e.event, e.data) for e in after] == [
        (e.id, e.event, e.data) for e in everything if int(e.id) > seen_up_to
    ]
    assert after[-1].event == "finished"
    assert after[-1].json()["outcome"] == "Succeeded"
    iterations = {e.json()["iteration"] for e in early + before_kill + after if e.event == "iteration"}
    assert iterations == set(range(1, 8))
    tokens = "".join(e.json()["text"] for e in everything if e.event == "token")
    assert "step 0 thinking" in tokens
    assert "all done" in tokens
    everything_ids = [int(e.id) for e in everything]
    assert everything_ids == sorted(set(everything_ids))
    assert everything[0].event == "checkpoint", "the start checkpoint comes first"
    assert everything[1].event == "iteration"
    kinds = {e.event for e in everything}
    assert {"iteration", "token", "tool_call", "tool_result", "checkpoint", "finished"} <= kinds


async def test_runner_stream_rejects_missing_and_wrong_tokens(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Answer("done", delay=0.2)])) as model:
        config = make_config(make_spec(model.base_url, **STREAMING), tmp_path)
        process = await RunnerProcess(runner_env(tmp_path, config)).start()
        port = await process.stream_port()
        async with httpx.AsyncClient(timeout=5) as client:
            missing = await client.get(f"http://127.0.0.1:{port}/events")
            wrong = await client.get(
                f"http://127.0.0.1:{port}/events", headers={"Authorization": "Bearer not-the-token"}
            )
        assert await process.wait() == EXIT_OUTCOME_RECORDED
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert STREAM_TOKEN not in process.output
    assert API_KEY not in process.output


async def test_runner_refuses_to_stream_without_a_token(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Answer("done")])) as model:
        config = make_config(make_spec(model.base_url, **STREAMING), tmp_path)
        process = await RunnerProcess(runner_env(tmp_path, config, {"AGENTRUN_STREAM_TOKEN": ""})).start()
        code = await process.wait()
    assert code == EXIT_INVALID_CONFIG
    assert "AGENTRUN_STREAM_TOKEN is not set" in process.output
    assert "Traceback" not in process.output


async def test_invalid_config_exits_with_the_invalid_config_code_and_names_the_field(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Answer("done")])) as model:
        config = make_config(make_spec(model.base_url), tmp_path)
        env = runner_env(tmp_path, config)
        raw = (tmp_path / "run.json").read_text().replace('"maxIterations":20', '"maxIterations":0')
        (tmp_path / "run.json").write_text(raw)
        process = await RunnerProcess(env).start()
        code = await process.wait()
    assert code == EXIT_INVALID_CONFIG
    assert "spec.maxIterations" in process.output
    assert "Traceback" not in process.output


LONG_ANSWER = " ".join(f"w{i}" for i in range(80))


async def read_until_killed(port: int, pod: RunnerProcess, kill_after_tokens: int) -> list[ServerSentEvent]:
    """A live reader that SIGKILLs the runner mid-answer and keeps what it got until the connection died."""
    seen: list[ServerSentEvent] = []
    try:
        async with (
            httpx.AsyncClient(timeout=15) as client,
            aconnect_sse(client, "GET", f"http://127.0.0.1:{port}/events", headers=AUTH) as source,
        ):
            async for event in dispatched_events(source):
                seen.append(event)
                if sum(1 for e in seen if e.event == "token") == kill_after_tokens:
                    pod.kill()
    except httpx.HTTPError:
        pass  # the connection died with the pod
    return seen


async def test_what_a_live_reader_saw_through_a_sigkill_equals_the_replay_and_interrupted_usage_counts(
    tmp_path: Path,
) -> None:
    async with ModelServer(by_turn([Answer(content=LONG_ANSWER, chunk_delay=0.03)])) as model:
        config = make_config(make_spec(model.base_url, **STREAMING), tmp_path)
        env = runner_env(tmp_path, config, {"AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "3"})

        first_pod = await RunnerProcess(env).start()
        live = await read_until_killed(await first_pod.stream_port(), first_pod, kill_after_tokens=10)
        await first_pod.wait()

        second_pod = await RunnerProcess(env).start()
        port = await second_pod.stream_port()
        live += await follow(port, live[-1].id)
        replay = await follow(port, None)
        counted = await second_pod.wait_for_log(
            r"iteration 1: counting the call a lost pod had in flight \((\d+) tokens"
        )
        assert await second_pod.wait() == EXIT_OUTCOME_RECORDED

    # Every event a live reader saw is in the log, under the same id: no reader sees what a replay lacks.
    assert [(e.id, e.event, e.data) for e in live] == [(e.id, e.event, e.data) for e in replay]
    assert live[-1].event == "finished"
    iterations = [e.json() for e in replay if e.event == "iteration"]
    # The interrupted attempt's tokens stay in the log; the retry says so, so a page drops that text.
    assert [(i["iteration"], i.get("retry", False)) for i in iterations] == [(1, False), (1, True)]
    retry_at = next(n for n, e in enumerate(replay) if e.event == "iteration" and e.json().get("retry"))
    interrupted_tokens = [e for e in replay[:retry_at] if e.event == "token"]
    assert len(interrupted_tokens) >= 10
    assert int(counted[1]) == len(interrupted_tokens)
    assert "".join(e.json()["text"] for e in replay[retry_at:] if e.event == "token").strip() == LONG_ANSWER

    # Usage counts what the provider served: both prompts (the interrupted call's too) and the
    # tokens streamed before the kill, not just the answer that completed.
    usage = read_progress(tmp_path).usage
    assert len(model.requests) == 2
    served_prompts = sum(request.size // 4 + 1 for request in model.requests)
    answered = [span for span in model.spans if span.answered]
    assert len(answered) == 1
    answer_completion = len(LONG_ANSWER) // 4 + 1
    assert usage.prompt_tokens >= served_prompts
    assert usage.completion_tokens >= answer_completion + len(interrupted_tokens)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_a_call_lost_while_waiting_in_the_throttle_queue_is_not_counted(tmp_path: Path) -> None:
    # One request a minute: the second model call waits in the run's throttle queue when the pod dies.
    script = by_turn([Answer(content="step one", tool_calls=[call("list_files")]), Answer(content="all done")])
    throttled = {**STREAMING, "throttle": {"enabled": True, "requestsPerMinute": 1}}
    async with ModelServer(script) as model:
        config = make_config(make_spec(model.base_url, **throttled), tmp_path)
        env = runner_env(tmp_path, config, {"AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "3"})

        first_pod = await RunnerProcess(env).start()
        port = await first_pod.stream_port()
        async with asyncio.timeout(45):
            while not any(e.event == "iteration" and e.json()["iteration"] == 2 for e in await follow_until_idle(port)):
                await asyncio.sleep(0.1)
        assert len(model.requests) == 1, "the second call is still queued"
        first_pod.kill()
        await first_pod.wait()

        second_pod = await RunnerProcess(env).start()
        assert await second_pod.wait() == EXIT_OUTCOME_RECORDED

    assert len(model.requests) == 2
    assert not any("counting the call a lost pod had in flight" in line for line in second_pod.log)
    usage = read_progress(tmp_path).usage
    # Exactly what the provider served: the queued call never reached it.
    assert usage.prompt_tokens == sum(request.size // 4 + 1 for request in model.requests)


async def follow_until_idle(port: int) -> list[ServerSentEvent]:
    """The events published so far (reads until the stream is quiet for a moment)."""
    seen: list[ServerSentEvent] = []
    with contextlib.suppress(TimeoutError):
        async with (
            httpx.AsyncClient(timeout=15) as client,
            aconnect_sse(client, "GET", f"http://127.0.0.1:{port}/events", headers=AUTH) as source,
        ):
            async with asyncio.timeout(0.5):
                async for event in dispatched_events(source):
                    seen.append(event)
    return seen
