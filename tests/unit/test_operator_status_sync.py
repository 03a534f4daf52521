"""Status computation: every phase transition from Job, pod and progress inputs, and the actions taken."""

import json
from typing import Any

import pytest

from agentrun_api import conditions as c
from agentrun_api import contract
from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import AgentRunStatus, Budget, CheckpointInfo, Condition, Phase
from agentrun_operator.children import RunOwner
from agentrun_operator.observations import JobObservation, Observed, PodObservation, ProgressObservation
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.status_sync import (
    DeleteJob,
    DeletePod,
    RecreateJob,
    RunContext,
    SetJobSuspended,
    Urgency,
    condition_of,
    decide,
    run_deadline,
    transition_events,
    write_urgency,
)
from tests.operator_samples import T0, at, job_object, manifest, pod_object, progress_document

pytestmark = pytest.mark.unit

OWNER = RunOwner(namespace="team-a", name="q3", uid="uid-q3")
SETTINGS = OperatorSettings(outcome_grace_seconds=10)


def spec_of(**overrides: Any) -> AgentRunSpec:
    return AgentRunSpec.model_validate(manifest(**overrides)["spec"])


def ctx(now: float, spec: AgentRunSpec | None = None, **extra: Any) -> RunContext:
    return RunContext(owner=OWNER, generation=1, spec=spec or spec_of(), settings=SETTINGS, now=at(now), **extra)


def progress(**fields: Any) -> ProgressObservation:
    return ProgressObservation.from_object({"data": {contract.PROGRESS_KEY: json.dumps(progress_document(**fields))}})


def observed(
    job: dict[str, Any] | None = None,
    pods: list[dict[str, Any]] | None = None,
    report: ProgressObservation | None = None,
) -> Observed:
    return Observed(
        job=JobObservation.from_object(job) if job is not None else None,
        pods=tuple(PodObservation.from_object(p) for p in pods or []),
        progress=report,
    )


def accepted_status(phase: Phase = Phase.PENDING) -> AgentRunStatus:
    return AgentRunStatus(
        phase=phase,
        conditions=[Condition(type=c.ACCEPTED, status="True", reason=c.REASON_CREATED, last_transition_time=T0)],
    )


def test_run_with_a_job_but_no_pod_yet_is_pending_with_zero_progress() -> None:
    decision = decide(accepted_status(), observed(job_object()), ctx(1))
    assert decision.status.phase == Phase.PENDING
    assert decision.status.progress == "0/50"
    assert decision.status.job_name == "q3-runner"
    assert decision.actions == []
    assert decision.recheck_after is not None


def test_running_pod_makes_the_run_running_and_says_so_once() -> None:
    old = accepted_status()
    decision = decide(old, observed(job_object(active=1), [pod_object()]), ctx(2))
    new = decision.status
    assert new.phase == Phase.RUNNING
    running = condition_of(new, c.RUNNING)
    assert running is not None
    assert running.status == "True"
    assert write_urgency(old, new) is Urgency.NOW
    assert [e.reason for e in transition_events(old, new, spec_of())] == [c.REASON_STARTED]
    assert new.start_time == T0


def test_a_pod_that_cannot_start_says_why_in_the_message_and_the_running_condition() -> None:
    pull = ("ImagePullBackOff", 'Back-off pulling image "registry.example/agent:1"')
    decision = decide(
        accepted_status(), observed(job_object(active=1), [pod_object(phase="Pending", waiting=pull)]), ctx(2)
    )

    assert decision.status.phase == Phase.PENDING
    expected = (
        'waiting for runner pod q3-runner-abcde: ImagePullBackOff: Back-off pulling image "registry.example/agent:1"'
    )
    assert decision.status.message == expected
    running = condition_of(decision.status, c.RUNNING)
    assert running is not None
    assert (running.status, running.message) == ("False", expected)


def test_a_pod_on_its_normal_way_to_running_is_only_waited_for() -> None:
    creating = ("ContainerCreating", "")
    decision = decide(
        accepted_status(), observed(job_object(active=1), [pod_object(phase="Pending", waiting=creating)]), ctx(2)
    )
    assert decision.status.message == "waiting for a runner pod"


def test_progress_report_is_mirrored_and_only_progress_is_rate_limited() -> None:
    running = decide(accepted_status(), observed(job_object(active=1), [pod_object()]), ctx(2)).status
    report = progress(
        iteration=12,
        reported=at(30),
        usage={"promptTokens": 100, "completionTokens": 20, "totalTokens": 120},
        lastCheckpoint={"iteration": 12, "time": at(29).isoformat(), "bytes": 2048},
        message="reading vendor B",
    )
    new = decide(running, observed(job_object(active=1), [pod_object()], report), ctx(31)).status
    assert new.phase == Phase.RUNNING
    assert (new.iteration, new.progress, new.message) == (12, "12/50", "reading vendor B")
    assert new.usage.total_tokens == 120
    assert new.last_checkpoint is not None
    assert new.last_checkpoint.bytes == 2048
    assert write_urgency(running, new) is Urgency.PROGRESS
    assert [e.reason for e in transition_events(running, new, spec_of())] == ["Checkpointed"]


def test_report_of_an_earlier_run_with_the_same_name_is_ignored() -> None:
    report = progress(iteration=40, reported=at(30), run_uid="uid-of-a-deleted-run", outcome="Succeeded")
    new = decide(accepted_status(Phase.RUNNING), observed(job_object(active=1), [pod_object()], report), ctx(31)).status
    assert new.phase == Phase.RUNNING
    assert new.iteration == 0


@pytest.mark.parametrize(
    ("outcome", "phase", "reason", "condition"),
    [
        ("Succeeded", Phase.SUCCEEDED, c.REASON_SUCCEEDED, c.COMPLETE),
        ("MaxIterationsReached", Phase.FAILED, c.REASON_MAX_ITERATIONS, c.FAILED),
        ("TimedOut", Phase.TIMED_OUT, c.REASON_TIMED_OUT, c.FAILED),
        ("TokenBudgetExceeded", Phase.FAILED, c.REASON_TOKEN_BUDGET, c.FAILED),
        ("ThrottleQueueTimeout", Phase.FAILED, c.REASON_THROTTLE_TIMEOUT, c.FAILED),
        ("ModelRequestRejected", Phase.FAILED, c.REASON_MODEL_REJECTED, c.FAILED),
        ("ModelRequestFailed", Phase.FAILED, c.REASON_MODEL_ERROR, c.FAILED),
        ("CheckpointError", Phase.FAILED, c.REASON_CHECKPOINT_ERROR, c.FAILED),
        ("Cancelled", Phase.CANCELLED, c.REASON_CANCELLED, c.FAILED),
    ],
)
def test_runner_outcome_ends_the_run_with_its_phase_reason_and_condition(
    outcome: str, phase: Phase, reason: str, condition: str
) -> None:
    report = progress(
        iteration=7,
        reported=at(60),
        outcome=outcome,
        result={"summary": "vendor B", "ref": "configmap/q3-ckpt-0#result", "bytes": 9},
    )
    old = accepted_status(Phase.RUNNING)
    decision = decide(old, observed(job_object(active=1), [pod_object()], report), ctx(61))
    new = decision.status
    assert (new.phase, new.reason) == (phase, reason)
    ended = condition_of(new, condition)
    assert ended is not None
    assert (ended.status, ended.reason) == ("True", reason)
    assert new.completion_time == at(61)
    assert new.result is not None
    assert new.result.summary == "vendor B"
    events = transition_events(old, new, spec_of())
    assert events[0].reason == reason
    assert events[0].type == ("Normal" if phase == Phase.SUCCEEDED else "Warning")


@pytest.mark.parametrize(
    ("job_reason", "phase", "reason"),
    [
        ("DeadlineExceeded", Phase.TIMED_OUT, c.REASON_DEADLINE_EXCEEDED),
        ("BackoffLimitExceeded", Phase.FAILED, c.REASON_BACKOFF_LIMIT),
        ("PodFailurePolicy", Phase.FAILED, c.REASON_INVALID_SPEC),
    ],
)
def test_failed_job_without_an_outcome_ends_the_run_by_the_jobs_reason(
    job_reason: str, phase: Phase, reason: str
) -> None:
    job = job_object(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": job_reason}])
    new = decide(accepted_status(Phase.RUNNING), observed(job), ctx(100)).status
    assert (new.phase, new.reason) == (phase, reason)


def test_completed_job_without_an_outcome_waits_a_grace_then_counts_as_lost() -> None:
    job = job_object(succeeded=1, completion=at(100), conditions=[{"type": "Complete", "status": "True"}])
    early = decide(accepted_status(Phase.RUNNING), observed(job), ctx(105))
    assert early.status.phase == Phase.RUNNING
    assert early.recheck_after == pytest.approx(5)
    late = decide(accepted_status(Phase.RUNNING), observed(job), ctx(111)).status
    assert (late.phase, late.reason) == (Phase.FAILED, c.REASON_RUNNER_LOST)


def test_terminal_phase_stays_terminal_whatever_is_observed_later() -> None:
    done = accepted_status(Phase.SUCCEEDED)
    failed_job = job_object(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}])
    decision = decide(done, observed(failed_job, [pod_object()]), ctx(500, spec_of(cancel=True)))
    assert decision.status.phase == Phase.SUCCEEDED
    assert decision.actions == []


def test_cancel_stops_the_job_and_ends_cancelled() -> None:
    decision = decide(
        accepted_status(Phase.RUNNING), observed(job_object(active=1), [pod_object()]), ctx(5, spec_of(cancel=True))
    )
    assert (decision.status.phase, decision.status.reason) == (Phase.CANCELLED, c.REASON_CANCELLED)
    assert decision.actions == [SetJobSuspended(True)]


def test_suspend_suspends_the_job_and_resume_unsuspends_it_from_the_checkpoint() -> None:
    running = accepted_status(Phase.RUNNING)
    suspending = decide(running, observed(job_object(active=1), [pod_object()]), ctx(5, spec_of(suspend=True)))
    assert suspending.status.phase == Phase.SUSPENDED
    assert suspending.actions == [SetJobSuspended(True)]
    suspended_cond = condition_of(suspending.status, c.SUSPENDED)
    assert suspended_cond is not None
    assert suspended_cond.status == "True"
    assert [e.reason for e in transition_events(running, suspending.status, spec_of())] == [c.REASON_SUSPENDED]

    already = decide(suspending.status, observed(job_object(suspend=True)), ctx(6, spec_of(suspend=True)))
    assert already.actions == []

    resuming = decide(suspending.status, observed(job_object(suspend=True)), ctx(50))
    assert resuming.actions == [SetJobSuspended(False)]
    assert (resuming.status.phase, resuming.status.reason) == (Phase.PENDING, c.REASON_RESUMED)
    resumed_cond = condition_of(resuming.status, c.SUSPENDED)
    assert resumed_cond is not None
    assert resumed_cond.status == "False"
    assert [e.reason for e in transition_events(suspending.status, resuming.status, spec_of())] == [c.REASON_RESUMED]


def test_operator_ends_a_run_over_its_token_budget_and_keeps_the_result() -> None:
    report = progress(
        iteration=9,
        reported=at(40),
        usage={"promptTokens": 900, "completionTokens": 200, "totalTokens": 1100},
        result={"summary": "partial", "ref": "configmap/q3-ckpt-0#result", "bytes": 7},
    )
    decision = decide(
        accepted_status(Phase.RUNNING),
        observed(job_object(active=1), [pod_object()], report),
        ctx(41, spec_of(tokenBudget=1000)),
    )
    assert (decision.status.phase, decision.status.reason) == (Phase.FAILED, c.REASON_TOKEN_BUDGET)
    assert decision.status.result is not None
    assert decision.status.result.summary == "partial"
    assert "the result so far is kept" in decision.status.message
    assert decision.actions == [SetJobSuspended(True)]


def test_a_run_the_operator_ends_over_its_token_budget_says_it_has_no_result_as_its_status_shows() -> None:
    # What the runner reports after the step that crossed the budget: usage, and no result (the runner
    # stores one only with the agent's final answer).
    report = progress(
        iteration=9, reported=at(40), usage={"promptTokens": 900, "completionTokens": 200, "totalTokens": 1100}
    )
    decision = decide(
        accepted_status(Phase.RUNNING),
        observed(job_object(active=1), [pod_object()], report),
        ctx(41, spec_of(tokenBudget=1000)),
    )
    status = decision.status
    assert (status.phase, status.reason) == (Phase.FAILED, c.REASON_TOKEN_BUDGET)
    assert status.result is None
    assert status.message == (
        "1100 tokens used, over spec.tokenBudget (1000); no result is stored: the run ended before the agent's "
        "final answer"
    )
    failed = condition_of(status, c.FAILED)
    assert failed is not None
    assert failed.message == status.message


def test_a_runner_stopped_after_the_run_ended_does_not_rewrite_its_message() -> None:
    over = progress(
        iteration=9, reported=at(40), usage={"promptTokens": 900, "completionTokens": 200, "totalTokens": 1100}
    )
    ended = decide(
        accepted_status(Phase.RUNNING),
        observed(job_object(active=1), [pod_object()], over),
        ctx(41, spec_of(tokenBudget=1000)),
    ).status
    # The suspended Job's pod gets SIGTERM: the runner checkpoints and says a next pod would resume, which
    # never happens to an ended run.
    stopping = progress(
        iteration=9,
        reported=at(42),
        usage={"promptTokens": 900, "completionTokens": 200, "totalTokens": 1100},
        message="stopped at iteration 9 (SIGTERM); the next pod resumes here",
    )
    after = decide(
        ended, observed(job_object(active=0, suspend=True), [], stopping), ctx(43, spec_of(tokenBudget=1000))
    )

    assert after.status.phase == Phase.FAILED
    assert after.status.message == ended.message

    # The runner's own account of the end (a report with its outcome) is still taken.
    outcome = progress(
        iteration=9,
        reported=at(44),
        outcome="TokenBudgetExceeded",
        message="used 1100 tokens of the tokenBudget of 1000 before finishing",
    )
    final = decide(
        after.status, observed(job_object(active=0, suspend=True), [], outcome), ctx(45, spec_of(tokenBudget=1000))
    )
    assert final.status.message == "used 1100 tokens of the tokenBudget of 1000 before finishing"


def test_silent_runner_is_replaced_while_restarts_remain_then_the_run_fails() -> None:
    spec = spec_of(progressDeadline="60s", retries={"maxRestarts": 1})
    report = progress(iteration=3, reported=at(10))
    quiet = observed(job_object(active=1), [pod_object(created=at(1))], report)
    within = decide(accepted_status(Phase.RUNNING), quiet, ctx(50, spec))
    assert within.actions == []
    assert within.recheck_after == pytest.approx(20)

    replace = decide(accepted_status(Phase.RUNNING), quiet, ctx(71, spec))
    assert replace.actions == [DeletePod("q3-runner-abcde")]
    assert [e.reason for e in replace.events] == [c.REASON_NO_PROGRESS]

    # The Job counted the replaced pod as a failure: the one restart is used up.
    exhausted = observed(job_object(active=1, failed=1), [pod_object("q3-runner-fghij", created=at(72))], report)
    failed = decide(accepted_status(Phase.RUNNING), exhausted, ctx(200, spec))
    assert (failed.status.phase, failed.status.reason) == (Phase.FAILED, c.REASON_NO_PROGRESS)
    assert failed.status.restarts == 1


def test_silent_job_without_pods_is_recreated() -> None:
    spec = spec_of(progressDeadline="60s")
    decision = decide(accepted_status(Phase.PENDING), observed(job_object()), ctx(100, spec))
    assert decision.actions == [RecreateJob(restarts_before=1)]


def test_lost_job_is_recreated_after_a_grace_while_restarts_remain() -> None:
    spec = spec_of(retries={"maxRestarts": 1})
    fresh = decide(accepted_status(Phase.RUNNING), observed(), ctx(5, spec, clock_reset_at=at(0)))
    assert fresh.actions == []
    lost = decide(accepted_status(Phase.RUNNING), observed(), ctx(20, spec, clock_reset_at=at(0)))
    assert lost.actions == [RecreateJob(restarts_before=1)]
    assert lost.status.restarts == 1
    assert [e.reason for e in lost.events] == [c.REASON_RUNNER_LOST]
    gone = decide(lost.status, observed(), ctx(40, spec, clock_reset_at=at(20)))
    assert (gone.status.phase, gone.status.reason) == (Phase.FAILED, c.REASON_RUNNER_LOST)


def test_restarts_count_pod_failures_across_recreated_jobs() -> None:
    job = job_object(active=1, failed=2, restarts_before=1)
    old = accepted_status(Phase.RUNNING)
    new = decide(old, observed(job, [pod_object()]), ctx(5)).status
    assert new.restarts == 3
    assert "Restarted" in [e.reason for e in transition_events(old, new, spec_of())]


def test_resumed_runner_is_announced_once() -> None:
    report = progress(iteration=12, reported=at(30), pod="q3-runner-new", resumedFromIteration=11)
    first = decide(accepted_status(Phase.RUNNING), observed(job_object(active=1), [pod_object()], report), ctx(31))
    assert [e.reason for e in first.events] == [c.REASON_RESUMED]
    again = decide(
        first.status,
        observed(job_object(active=1), [pod_object()], report),
        ctx(32, previous_report_pod="q3-runner-new"),
    )
    assert again.events == []


def test_ttl_deletes_the_job_after_the_run_ended_but_never_before() -> None:
    spec = spec_of(ttlSecondsAfterFinished=30)
    done = accepted_status(Phase.SUCCEEDED).model_copy(update={"completion_time": at(100)})
    waiting = decide(done, observed(job_object(succeeded=1)), ctx(110, spec))
    assert waiting.actions == []
    assert waiting.recheck_after == pytest.approx(20)
    due = decide(done, observed(job_object(succeeded=1)), ctx(131, spec))
    assert due.actions == [DeleteJob()]
    assert due.status.phase == Phase.SUCCEEDED
    after = decide(done, observed(), ctx(140, spec))
    assert after.actions == []


def test_token_budget_warning_fires_when_usage_crosses_eighty_percent() -> None:
    spec = spec_of(tokenBudget=1000)
    old = accepted_status(Phase.RUNNING)
    new = old.model_copy(update={"usage": old.usage.model_copy(update={"total_tokens": 850})})
    assert [e.reason for e in transition_events(old, new, spec)] == ["TokenBudgetNearlyUsed"]
    assert transition_events(new, new, spec) == []


def test_unreadable_progress_report_names_the_problem_without_echoing_it() -> None:
    broken = ProgressObservation.from_object(
        {
            "data": {
                contract.PROGRESS_KEY: '{"runUid": "uid-q3", "pod": "p", "reportedAt": "2026-01-01T00:00:00Z", "iteration": -1}'
            }
        }
    )
    assert broken.report is None
    assert "iteration" in broken.error
    assert "-1" not in broken.error
    status = decide(
        accepted_status(Phase.RUNNING), observed(job_object(active=1), [pod_object()], broken), ctx(5)
    ).status
    assert status.message == broken.error


def test_checkpoint_events_are_the_first_and_then_one_per_tenth_of_the_run() -> None:
    spec = spec_of(maxIterations=100)
    base = accepted_status(Phase.RUNNING)

    def at_checkpoint(iteration: int) -> AgentRunStatus:
        return base.model_copy(
            update={"last_checkpoint": CheckpointInfo(iteration=iteration, time=T0, bytes=1)} if iteration >= 0 else {}
        )

    announced = [
        n
        for n in range(0, 101)
        if [e.reason for e in transition_events(at_checkpoint(n - 1), at_checkpoint(n), spec)] == ["Checkpointed"]
    ]
    assert announced == [0, *range(10, 101, 10)]


def test_the_operator_ends_a_run_timed_out_at_its_wall_clock_deadline_even_if_no_pod_reports() -> None:
    spec = spec_of(maxExecutionTime="60s", progressDeadline="10m")
    pending = accepted_status(Phase.PENDING)
    pending.budget = Budget(
        worst_case_seconds=30, max_execution_seconds=60, fits=True, active_deadline_seconds=60, clock_start_time=at(0)
    )
    waiting = decide(pending, observed(job_object()), ctx(45, spec, clock_reset_at=at(40)))
    assert waiting.status.phase == Phase.PENDING
    assert waiting.recheck_after == pytest.approx(15)  # the deadline, not the 10m progress deadline
    timed_out = decide(pending, observed(job_object(active=1), [pod_object()]), ctx(60, spec))
    assert (timed_out.status.phase, timed_out.status.reason) == (Phase.TIMED_OUT, c.REASON_TIMED_OUT)
    assert "maxExecutionTime (60s) ran out" in timed_out.status.message
    assert timed_out.actions == [SetJobSuspended(True)]  # its pod gets SIGTERM and checkpoints


def test_a_status_without_a_clock_start_counts_from_acceptance_and_an_edited_budget_applies() -> None:
    assert run_deadline(AgentRunStatus(), spec_of()) is None  # not accepted: no clock yet
    assert run_deadline(accepted_status(), spec_of(maxExecutionTime="2m")) == at(120)
    ended = decide(
        accepted_status(Phase.RUNNING), observed(job_object(active=1)), ctx(120, spec_of(maxExecutionTime="2m"))
    )
    assert ended.status.phase == Phase.TIMED_OUT
