"""Approval gates: the runner's gate on a call, and the operator's bookkeeping of a run that waits (pure parts)."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrun_api import approval, contract
from agentrun_api import conditions as c
from agentrun_api.spec import AgentRunSpec, ApprovalsSpec
from agentrun_api.status import AgentRunStatus, Budget, Condition, Phase
from agentrun_operator.approvals import RemoveJobWhileWaiting, ResumeAfterApproval
from agentrun_operator.children import RunOwner
from agentrun_operator.kubectl_plugin import PluginError, waiting_call
from agentrun_operator.observations import (
    ApprovalObservation,
    JobObservation,
    Observed,
    ProgressObservation,
)
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.status_sync import RunContext, condition_of, decide, run_deadline, transition_events
from agentrun_runner.approvals import (
    REDACTED,
    ApprovalGate,
    ApprovalRequiredError,
    CallDeniedError,
    describe_arguments,
    load_decisions,
)
from tests.harness.chart import CHART_DIR, render_objects
from tests.operator_samples import T0, at, job_object, manifest, progress_document

pytestmark = pytest.mark.unit

OWNER = RunOwner(namespace="team-a", name="q3", uid="uid-q3")
KEY = "uid-q3:2:0"
GATED = ApprovalsSpec(tools=["http_fetch"], timeout="10m")


# --- the runner's gate ---------------------------------------------------------------------------------------------


def test_a_tool_not_listed_runs_without_a_decision() -> None:
    ApprovalGate(GATED).check("read_file", '{"path": "a"}', KEY)
    ApprovalGate(None).check("http_fetch", '{"url": "https://x"}', KEY)


def test_a_listed_tool_without_a_decision_asks_for_one_with_its_secret_like_arguments_redacted() -> None:
    with pytest.raises(ApprovalRequiredError) as raised:
        ApprovalGate(GATED).check("http_fetch", json.dumps({"url": "https://x", "headers": {"apiKey": "sk-1"}}), KEY)
    request = raised.value.request
    assert (request.key, request.tool) == (KEY, "http_fetch")
    assert json.loads(request.arguments) == {"url": "https://x", "headers": {"apiKey": REDACTED}}
    assert "sk-1" not in request.arguments


def test_arguments_shown_to_approvers_are_bounded() -> None:
    shown = describe_arguments(json.dumps({"content": "x" * 10_000}))
    assert len(shown) <= contract.ApprovalRequest.model_fields["arguments"].metadata[0].max_length
    assert shown.endswith("characters]")


def test_an_approved_call_runs_and_a_denied_one_tells_the_model_who_and_why() -> None:
    approved = contract.ApprovalDecision(key=KEY, approved=True, decided_by="alice")
    ApprovalGate(GATED, [approved]).check("http_fetch", "{}", KEY)

    denied = contract.ApprovalDecision(key=KEY, approved=False, reason="not on prod", decided_by="bob")
    with pytest.raises(CallDeniedError, match="denied by bob: not on prod"):
        ApprovalGate(GATED, [denied]).check("http_fetch", "{}", KEY)
    timed_out = contract.ApprovalDecision(key=KEY, approved=False, reason="no decision within 10m")
    with pytest.raises(CallDeniedError, match="no decision came in time: no decision within 10m"):
        ApprovalGate(GATED, [timed_out]).check("http_fetch", "{}", KEY)


def test_decisions_load_from_the_file_next_to_the_config(tmp_path: Path) -> None:
    assert load_decisions(tmp_path / contract.APPROVALS_FILE) == []
    path = tmp_path / contract.APPROVALS_FILE
    path.write_text(json.dumps([{"key": KEY, "approved": True, "decidedBy": "alice"}]))
    assert load_decisions(path) == [contract.ApprovalDecision(key=KEY, approved=True, decided_by="alice")]
    path.write_text('[{"key": 1}]')
    with pytest.raises(ValueError, match="approval decisions"):
        load_decisions(path)


# --- the operator's side -------------------------------------------------------------------------------------------


def spec_of(**approvals: Any) -> AgentRunSpec:
    spec = manifest(maxExecutionTime="60s", approvals={"tools": ["http_fetch"], "timeout": "5m", **approvals})["spec"]
    return AgentRunSpec.model_validate(spec)


def ctx(now: float, spec: AgentRunSpec) -> RunContext:
    return RunContext(owner=OWNER, generation=1, spec=spec, settings=OperatorSettings(), now=at(now))


def running_status() -> AgentRunStatus:
    return AgentRunStatus(
        phase=Phase.RUNNING,
        budget=Budget(
            worst_case_seconds=0,
            max_execution_seconds=60,
            fits=True,
            active_deadline_seconds=60,
            clock_start_time=T0,
            deadline=at(60),
        ),
        conditions=[Condition(type=c.ACCEPTED, status="True", reason=c.REASON_CREATED, last_transition_time=T0)],
    )


def stopped_report(requested: float = 10) -> ProgressObservation:
    request = {"key": KEY, "tool": "http_fetch", "arguments": '{"url": "https://x"}', "requestedAt": at(requested)}
    document = progress_document(iteration=2, reported=at(requested), approvalRequests=[request])
    return ProgressObservation.from_object(
        {"data": {contract.PROGRESS_KEY: json.dumps(document, default=lambda t: t.isoformat())}}
    )


def observed(job: bool, *decisions: ApprovalObservation) -> Observed:
    completed = job_object(succeeded=1, completion=at(11)) if job else None
    return Observed(
        job=JobObservation.from_object(completed) if completed else None,
        progress=stopped_report(),
        approvals=decisions,
    )


def decided(approved: bool, by: str = "alice", reason: str = "ok", created: float = 100) -> ApprovalObservation:
    return ApprovalObservation(
        name="q3-2-0", call=KEY, approved=approved, reason=reason, decided_by=by, created=at(created)
    )


def test_a_stopped_runner_leaves_the_run_waiting_with_no_job_and_its_clock_stopped_past_the_deadline() -> None:
    spec = spec_of()
    old = running_status()
    decision = decide(old, observed(True), ctx(12, spec))
    new = decision.status
    assert new.phase == Phase.WAITING_FOR_APPROVAL
    assert decision.actions == [RemoveJobWhileWaiting()]
    assert [(e.call, e.tool, e.decision) for e in new.approvals] == [(KEY, "http_fetch", "")]
    assert new.budget is not None
    assert new.budget.waiting_since == at(10)
    waiting = condition_of(new, c.WAITING_FOR_APPROVAL)
    assert waiting is not None
    assert waiting.status == "True"
    assert "kubectl agentrun approve|deny q3" in new.message
    assert [e.reason for e in transition_events(old, new, spec)] == [c.REASON_APPROVAL_REQUESTED]

    # Long past maxExecutionTime (60s), no Job: still waiting, never TimedOut, and no look at the old deadline.
    later = decide(new, observed(False), ctx(200, spec))
    assert later.status.phase == Phase.WAITING_FOR_APPROVAL
    assert later.actions == []
    assert later.recheck_after == pytest.approx(10 + 300 - 200)  # the request's own timeout


def test_a_decision_resumes_the_run_with_a_new_job_its_deadline_moved_by_the_wait_and_no_restart_counted() -> None:
    spec = spec_of()
    waiting = decide(running_status(), observed(True), ctx(12, spec)).status
    # The stopped runner's Job is still there: the decision is recorded, the resume waits for the Job to go.
    held = decide(waiting, observed(True, decided(True)), ctx(101, spec))
    assert held.status.phase == Phase.WAITING_FOR_APPROVAL
    assert held.actions == [RemoveJobWhileWaiting()]
    [entry] = held.status.approvals
    assert (entry.decision, entry.decided_by, entry.approval) == (approval.APPROVED, "alice", "q3-2-0")

    resumed = decide(held.status, observed(False, decided(True)), ctx(102, spec))
    new = resumed.status
    assert new.phase == Phase.PENDING
    assert new.reason == c.REASON_APPROVAL_DECIDED
    assert new.budget is not None
    assert (new.budget.waited_seconds, new.budget.waiting_since) == (92, None)
    assert run_deadline(new, spec) == at(60 + 92) == new.budget.deadline
    [action] = resumed.actions
    assert isinstance(action, ResumeAfterApproval)
    assert action.deadline == at(152)
    assert action.restarts_before == 0
    assert new.restarts == 0
    assert action.decisions == (contract.ApprovalDecision(key=KEY, approved=True, reason="ok", decided_by="alice"),)
    assert [e.reason for e in transition_events(waiting, new, spec)] == [c.REASON_APPROVAL_DECIDED]


def test_the_first_decision_on_a_call_wins() -> None:
    spec = spec_of()
    waiting = decide(running_status(), observed(False), ctx(12, spec)).status
    later_approval = decided(True, by="mallory", created=120)
    resumed = decide(waiting, observed(False, later_approval, decided(False, reason="no")), ctx(130, spec))
    [entry] = resumed.status.approvals
    assert (entry.decision, entry.decided_by, entry.reason) == (approval.DENIED, "alice", "no")


def test_no_decision_within_the_timeout_denies_by_default_and_says_so() -> None:
    spec = spec_of(timeout="30s")
    waiting = decide(running_status(), observed(False), ctx(12, spec)).status
    assert decide(waiting, observed(False), ctx(39, spec)).status.phase == Phase.WAITING_FOR_APPROVAL
    resumed = decide(waiting, observed(False), ctx(40, spec))
    [entry] = resumed.status.approvals
    assert (entry.decision, entry.decided_by) == (approval.DENIED, "")
    assert "spec.approvals.onTimeout is Deny" in entry.reason
    assert isinstance(resumed.actions[0], ResumeAfterApproval)
    assert resumed.actions[0].decisions[0].approved is False


def test_no_decision_within_the_timeout_fails_the_run_when_on_timeout_is_fail() -> None:
    spec = spec_of(timeout="30s", onTimeout="Fail")
    waiting = decide(running_status(), observed(False), ctx(12, spec)).status
    ended = decide(waiting, observed(False), ctx(41, spec))
    assert ended.status.phase == Phase.FAILED
    assert ended.status.reason == c.REASON_APPROVAL_TIMED_OUT
    assert "within spec.approvals.timeout (30s)" in ended.status.message
    assert ended.status.budget is not None
    assert ended.status.budget.waiting_since is None
    assert ended.status.budget.waited_seconds == 31


def test_the_chart_installs_the_generated_admission_policy() -> None:
    on_disk = (CHART_DIR / "files" / "approval-policy.yaml").read_text()
    assert on_disk == approval.render_admission_policy(), "run `make chart-sync`"
    [policy, binding] = [doc for doc in yaml.safe_load_all(on_disk) if doc]
    [as_creator, as_recorder] = [check["expression"] for check in policy["spec"]["validations"]]
    assert as_creator.endswith("|| object.spec.decidedBy == request.userInfo.username")
    assert "object.spec.recordedBy == request.userInfo.username" in as_recorder
    assert f".check('{approval.RECORD_VERB}').allowed()" in as_recorder
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}


def test_an_approval_names_one_call_of_one_run() -> None:
    assert approval.approval_name("q3", KEY) == "q3-2-0"
    with pytest.raises(ValueError, match="call"):
        approval.AgentRunApprovalSpec(run="q3", call="not a key", decision="Approve", decided_by="alice")


def test_the_chart_renders_the_policy_and_its_binding_with_the_crds_and_not_without() -> None:
    rendered = {o["kind"]: o for o in render_objects() if o["kind"].startswith("ValidatingAdmissionPolicy")}
    generated = {o["kind"]: o for o in approval.admission_policy()}
    assert rendered.keys() == generated.keys()
    for kind, obj in generated.items():
        assert rendered[kind]["spec"] == obj["spec"]
        assert rendered[kind]["metadata"]["name"] == obj["metadata"]["name"]
    without_crds = render_objects({"crds": {"enabled": False}})
    assert not [o for o in without_crds if o["kind"].startswith("ValidatingAdmissionPolicy")]


# --- kubectl agentrun approve|deny: which call -----------------------------------------------------------------------


def run_with(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "q3", "uid": "uid-q3"},
        "status": {"phase": "WaitingForApproval", "approvals": list(entries)},
    }


def test_the_plugin_decides_the_only_waiting_call_or_the_one_named() -> None:
    one = {"call": "uid-q3:2:0", "tool": "http_fetch", "decision": ""}
    two = {"call": "uid-q3:2:1", "tool": "write_file", "decision": ""}
    done = {"call": "uid-q3:1:0", "tool": "http_fetch", "decision": "Approved"}
    assert waiting_call(run_with(one, done), "q3", None) == one
    assert waiting_call(run_with(one, two), "q3", "2:1") == two
    assert waiting_call(run_with(one, two), "q3", "uid-q3:2:0") == one
    with pytest.raises(PluginError, match=r"2 call\(s\) waiting: uid-q3:2:0 .*name one of them as CALL"):
        waiting_call(run_with(one, two), "q3", None)
    with pytest.raises(PluginError, match="call uid-q3:1:0 of agentrun q3 was already approved"):
        waiting_call(run_with(one, done), "q3", "uid-q3:1:0")
    with pytest.raises(PluginError, match="has no call waiting for approval"):
        waiting_call(run_with(done), "q3", None)
