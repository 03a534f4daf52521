"""The runs API's approve/deny door, its pure parts: which call a path names, the body's reason, the run view."""

import asyncio
from typing import Any

import pytest

from agentrun_gateway import runs_approvals
from agentrun_gateway.refusals import RefusalError

KEY = "4f1c-9a:2:0"
# A call already decided is answered from the run's status alone: nothing is read or written in Kubernetes.
UNWRITABLE = runs_approvals.Approvals(kube=None)  # type: ignore[arg-type]


def run(phase: str = "WaitingForApproval", **entry: Any) -> dict[str, Any]:
    waiting = {"call": KEY, "tool": "http_fetch", "arguments": '{"url": "u"}', "requestedAt": "2026-01-01T00:00:00Z"}
    return {
        "metadata": {"name": "deploy", "namespace": "agents", "uid": "4f1c-9a"},
        "status": {"phase": phase, "approvals": [{**waiting, **entry}]},
    }


@pytest.mark.parametrize("call", [KEY, "2:0"])
def test_a_call_is_named_by_its_key_or_its_iteration_index_tail(call: str) -> None:
    assert runs_approvals.requested_call(run(), call)["call"] == KEY


@pytest.mark.parametrize("call", ["0", "1:0", "other:2:0", "2:0:", "../x"])
def test_a_call_the_run_did_not_request_is_not_found_and_the_answer_names_the_waiting_ones(call: str) -> None:
    with pytest.raises(RefusalError) as refused:
        runs_approvals.requested_call(run(), call)
    assert (refused.value.status, refused.value.code, refused.value.field) == (404, "CallNotFound", "call")
    assert KEY in refused.value.message


def test_a_waiting_call_of_an_ended_run_cannot_be_decided() -> None:
    with pytest.raises(RefusalError) as refused:
        runs_approvals.requested_call(run("Cancelled"), KEY)
    assert (refused.value.status, refused.value.code) == (409, "RunEnded")
    assert "already ended as Cancelled" in refused.value.message


def test_a_call_decided_by_the_timeout_default_is_final() -> None:
    timed_out = run(decision="Denied", reason="no decision within spec.approvals.timeout (1h)")
    with pytest.raises(RefusalError) as refused:
        asyncio.run(UNWRITABLE.decide(timed_out, KEY, "Deny", "", "alice"))
    assert (refused.value.status, refused.value.code) == (409, "AlreadyDecided")
    assert "denied by spec.approvals.onTimeout" in refused.value.message


def test_the_same_decision_again_answers_the_record_and_another_one_names_who_decided() -> None:
    decided = run(decision="Approved", decidedBy="alice", reason="ok", approval="deploy-2-0")
    again = asyncio.run(UNWRITABLE.decide(decided, "2:0", "Approve", "", "bob"))
    assert again.replayed
    assert (again.record["decidedBy"], again.record["approval"]) == ("alice", "deploy-2-0")
    with pytest.raises(RefusalError) as refused:
        asyncio.run(UNWRITABLE.decide(decided, KEY, "Deny", "", "bob"))
    assert (refused.value.status, refused.value.code) == (409, "AlreadyDecided")
    assert "already approved by alice" in refused.value.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"decision": "Approve"}, "decision"),
        ({"reason": 3}, "reason"),
        ({"reason": "x" * 1025}, "reason"),
    ],
)
def test_the_body_holds_at_most_a_reason(body: Any, field: str) -> None:
    with pytest.raises(RefusalError) as refused:
        runs_approvals.checked_reason(body)
    assert (refused.value.status, refused.value.field) == (422, field)


def test_a_reason_is_optional() -> None:
    assert runs_approvals.checked_reason(None) == ""
    assert runs_approvals.checked_reason({}) == ""
    assert runs_approvals.checked_reason({"reason": "change 42"}) == "change 42"


def test_the_run_view_lists_requests_with_where_to_decide() -> None:
    [shown] = runs_approvals.approvals_view(run(), "/v1/namespaces/agents/runs/deploy")
    assert (shown["call"], shown["tool"], shown["decision"], shown["decidedBy"]) == (KEY, "http_fetch", "", "")
    assert shown["arguments"] == '{"url": "u"}'
    assert shown["requestedAt"] == "2026-01-01T00:00:00Z"
    assert shown["links"]["deny"] == f"/v1/namespaces/agents/runs/deploy/approvals/{KEY}/deny"
