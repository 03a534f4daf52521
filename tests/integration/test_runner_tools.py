"""Tool calls: parallel calls run concurrently, a failing tool tells the model instead of ending
the run, each call has its own timeout, and http_fetch sends the idempotency key."""

import json
from pathlib import Path

import pytest

from agentrun_api.contract import Outcome
from tests.harness.model_server import Answer, ModelServer, by_turn, call
from tests.harness.runner import ToolServer, large_body, make_config, make_spec, run_in_process

pytestmark = pytest.mark.integration

UID = "0f0e0d0c-uid"


def tool_outputs(messages: list[dict[str, object]]) -> dict[str, str]:
    return {str(m["tool_call_id"]): str(m["content"]) for m in messages if m["role"] == "tool"}


async def test_parallel_tool_calls_run_concurrently_and_a_failing_tool_is_reported(tmp_path: Path) -> None:
    async with ToolServer(rendezvous=2) as tools:
        script = by_turn(
            [
                Answer(
                    tool_calls=[
                        call("http_fetch", url=tools.url("together/a")),
                        call("http_fetch", url=tools.url("together/b")),
                        call("read_file", path="missing.md"),
                        call("write_file", path="../outside.txt", content="escape"),
                        call("no_such_tool"),
                    ]
                ),
                Answer("done"),
            ]
        )
        async with ModelServer(script) as model:
            spec = make_spec(model.base_url, tools={"httpFetch": {"allowedHosts": ["127.0.0.1"]}})
            run = await run_in_process(make_config(spec, tmp_path, uid=UID), tmp_path)

    assert run.progress.outcome is Outcome.SUCCEEDED
    assert tools.max_in_flight == 2, "both fetches were in flight at once"
    outputs = tool_outputs(run.state.messages)
    assert json.loads(outputs["call_0_0"])["status"] == 200
    assert f"{UID}:1:1" in json.loads(outputs["call_0_1"])["body"]
    assert outputs["call_0_2"] == "error: no file 'missing.md' in the workspace"
    assert outputs["call_0_3"] == "error: path '../outside.txt' leaves the workspace"
    assert outputs["call_0_4"] == "error: there is no tool named 'no_such_tool'"
    assert not (tmp_path / "outside.txt").exists()
    # The model got every result, in call order, before its next call.
    second = model.requests[1].messages
    assert [m["tool_call_id"] for m in second if m["role"] == "tool"] == [f"call_0_{i}" for i in range(5)]
    # Keys {uid}:{step}:{index} went out as Idempotency-Key and are in the tool-call log.
    assert set(tools.executions) == {f"{UID}:1:0", f"{UID}:1:1"}
    assert set(run.state.tool_log) == {f"{UID}:1:{i}" for i in range(5)}
    assert [run.state.tool_log[f"{UID}:1:{i}"].ok for i in range(5)] == [True, True, False, False, False]


async def test_a_slow_tool_times_out_alone_and_the_run_goes_on(tmp_path: Path) -> None:
    async with ToolServer() as tools:
        script = by_turn(
            [
                Answer(tool_calls=[call("http_fetch", url=tools.url("slow/5")), call("list_files")]),
                Answer("done anyway"),
            ]
        )
        async with ModelServer(script) as model:
            spec = make_spec(model.base_url, tools={"httpFetch": {"allowedHosts": ["127.0.0.1"]}, "callTimeout": "1s"})
            run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    assert run.progress.outcome is Outcome.SUCCEEDED
    outputs = tool_outputs(run.state.messages)
    assert outputs["call_0_0"] == "error: http_fetch did not finish within tools.callTimeout (1s)"
    assert outputs["call_0_1"] == "[]"


async def test_http_fetch_reaches_only_allowed_hosts(tmp_path: Path) -> None:
    async with ToolServer() as tools:
        script = by_turn(
            [
                Answer(
                    tool_calls=[
                        call("http_fetch", url=tools.url("x").replace("127.0.0.1", "localhost")),
                        call("http_fetch", url="file:///etc/passwd"),
                    ]
                ),
                Answer("ok"),
            ]
        )
        async with ModelServer(script) as model:
            spec = make_spec(model.base_url, tools={"httpFetch": {"allowedHosts": ["127.0.0.1"]}})
            run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    outputs = tool_outputs(run.state.messages)
    assert outputs["call_0_0"] == "error: host 'localhost' is not in tools.httpFetch.allowedHosts"
    assert outputs["call_0_1"] == "error: 'file:///etc/passwd' is not an http or https URL"
    assert sum(tools.deliveries.values()) == 0


async def test_http_fetch_caps_the_body_size(tmp_path: Path) -> None:
    async with ToolServer() as tools:
        script = by_turn([Answer(tool_calls=[call("http_fetch", url=tools.url("long-path-name"))]), Answer("ok")])
        async with ModelServer(script) as model:
            spec = make_spec(
                model.base_url, tools={"httpFetch": {"allowedHosts": ["127.0.0.1"], "maxResponseBytes": 10}}
            )
            run = await run_in_process(make_config(spec, tmp_path), tmp_path)

    result = json.loads(tool_outputs(run.state.messages)["call_0_0"])
    assert result["body"] == "source lon"
    assert result["truncated"] is True


@pytest.mark.parametrize(
    ("max_response_bytes", "seen_bytes", "truncated"),
    [(1_048_576, 600_000, False), (500_000, 500_000, True)],
    ids=["under-the-cap", "over-the-cap"],
)
async def test_http_fetch_reads_a_body_larger_than_one_network_read(
    tmp_path: Path, max_response_bytes: int, seen_bytes: int, truncated: bool
) -> None:
    async with ToolServer() as tools:
        script = by_turn([Answer(tool_calls=[call("http_fetch", url=tools.url("bytes/600000"))]), Answer("ok")])
        async with ModelServer(script) as model:
            spec = make_spec(
                model.base_url,
                tools={"httpFetch": {"allowedHosts": ["127.0.0.1"], "maxResponseBytes": max_response_bytes}},
            )
            # Tool output reaches the model whole here, so what it sees is what http_fetch read.
            run = await run_in_process(make_config(spec, tmp_path), tmp_path, max_tool_output_chars=2_000_000)

    result = json.loads(tool_outputs(run.state.messages)["call_0_0"])
    assert result["status"] == 200
    assert len(result["body"]) == seen_bytes
    assert result["body"] == large_body(600_000)[:seen_bytes].decode()
    assert result["truncated"] is truncated
