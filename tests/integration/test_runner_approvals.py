"""The runner's side of an approval gate, as its pods live it: the first pod stops at the gated call (exit 0, the
request journaled and reported, the call not sent, the step's other calls run); a pod started with the decision
runs the approved call once and finishes; a pod started after that repeats nothing."""

import json
from pathlib import Path

import pytest

from agentrun_api import contract
from agentrun_api.contract import Outcome
from tests.harness.model_server import Answer, ModelServer, by_turn, call
from tests.harness.runner import ToolServer, make_config, make_spec, run_in_process

pytestmark = pytest.mark.integration

UID = "approval-run-uid"


async def test_a_gated_call_stops_the_runner_and_runs_exactly_once_after_approval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / contract.CONFIG_FILE
    monkeypatch.setenv(contract.CONFIG_ENV, str(config_path))  # the decisions file is read next to it
    async with ToolServer() as tools:
        script = by_turn(
            [
                Answer(tool_calls=[call("list_files"), call("http_fetch", url=tools.url("payments/42"))]),
                Answer("Paid invoice 42."),
            ]
        )
        async with ModelServer(script) as model:
            spec = make_spec(
                model.base_url,
                tools={"httpFetch": {"allowedHosts": ["127.0.0.1"]}},
                approvals={"tools": ["http_fetch"]},
            )
            config = make_config(spec, tmp_path, uid=UID)
            gated = f"{UID}:1:1"

            stopped = await run_in_process(config, tmp_path)
            assert stopped.exit_code == contract.EXIT_OUTCOME_RECORDED
            assert stopped.progress.outcome is None
            [request] = stopped.progress.approval_requests
            assert (request.key, request.tool) == (gated, "http_fetch")
            assert tools.url("payments/42") in request.arguments
            assert "wait for approval" in stopped.progress.message
            assert sum(tools.deliveries.values()) == 0  # the gated call was not sent
            assert set(stopped.state.tool_log) == {f"{UID}:1:0"}  # the step's other call ran and is journaled
            assert [e.type for e in stopped.state.events if e.type == "approval_requested"] == ["approval_requested"]
            assert len(model.requests) == 1

            decision = contract.ApprovalDecision(key=gated, approved=True, reason="ok", decided_by="alice")
            (tmp_path / contract.APPROVALS_FILE).write_text(json.dumps([decision.model_dump(by_alias=True)]))
            finished = await run_in_process(config, tmp_path)
            assert finished.progress.outcome is Outcome.SUCCEEDED
            assert finished.progress.approval_requests == []
            assert dict(tools.executions) == {gated: 1}
            assert finished.state.tool_log[gated].ok
            # The model saw both results, the approved call's among them, then answered.
            tool_messages = [m for m in model.requests[-1].messages if m["role"] == "tool"]
            assert len(tool_messages) == 2
            assert "fetched once under" in tool_messages[1]["content"]

            again = await run_in_process(config, tmp_path)  # a pod started after the end
            assert again.progress.outcome is Outcome.SUCCEEDED
            assert dict(tools.deliveries) == {gated: 1}
            assert len(model.requests) == 2
