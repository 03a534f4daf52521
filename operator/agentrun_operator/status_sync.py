"""The status of a run, computed from what was observed; and what to do about it. Pure.

``decide`` takes the status last written, the observed Job, pods and progress report, and the time,
and returns the status to write, the actions to take on the run's children (restart, suspend,
stop) and when to look again. ``transition_events`` names the Kubernetes Events a status change is
worth. ``write_urgency`` tells a phase change (written at once) from mere progress (rate-limited).
"""

import dataclasses
import enum
import math
from collections.abc import Callable
from datetime import datetime, timedelta

from agentrun_api import conditions as c
from agentrun_api import contract
from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import AgentRunStatus, CheckpointInfo, Condition, Phase, Result, next_phase
from agentrun_common.durations import parse_duration
from agentrun_operator import approvals
from agentrun_operator.approvals import RemoveJobWhileWaiting, ResumeAfterApproval
from agentrun_operator.children import RunOwner, job_name, stream_service_name
from agentrun_operator.observations import JobObservation, Observed
from agentrun_operator.settings import OperatorSettings

# Checkpointed Events per run, besides the first checkpoint (the status always shows the latest).
CHECKPOINT_EVENTS_PER_RUN = 10
# A pending run's message and Running condition while no pod of it says why it does not run (admission says it too).
WAITING_FOR_POD = "waiting for a runner pod"
# Share of spec.tokenBudget past which the user is warned once.
TOKEN_BUDGET_WARNING_SHARE = 0.8

OUTCOME_PHASES: dict[contract.Outcome, tuple[Phase, str]] = {
    contract.Outcome.SUCCEEDED: (Phase.SUCCEEDED, c.REASON_SUCCEEDED),
    contract.Outcome.MAX_ITERATIONS: (Phase.FAILED, c.REASON_MAX_ITERATIONS),
    contract.Outcome.TIMED_OUT: (Phase.TIMED_OUT, c.REASON_TIMED_OUT),
    contract.Outcome.TOKEN_BUDGET_EXCEEDED: (Phase.FAILED, c.REASON_TOKEN_BUDGET),
    contract.Outcome.THROTTLE_QUEUE_TIMEOUT: (Phase.FAILED, c.REASON_THROTTLE_TIMEOUT),
    contract.Outcome.MODEL_REJECTED: (Phase.FAILED, c.REASON_MODEL_REJECTED),
    contract.Outcome.MODEL_FAILED: (Phase.FAILED, c.REASON_MODEL_ERROR),
    contract.Outcome.CHECKPOINT_ERROR: (Phase.FAILED, c.REASON_CHECKPOINT_ERROR),
    contract.Outcome.CANCELLED: (Phase.CANCELLED, c.REASON_CANCELLED),
}


@dataclasses.dataclass(frozen=True)
class SetJobSuspended:
    """Suspend the Job (its pods get SIGTERM and checkpoint) or let it run again."""

    suspend: bool


@dataclasses.dataclass(frozen=True)
class DeletePod:
    """Replace a stuck runner pod; the Job starts another, which resumes from the checkpoint."""

    name: str


@dataclasses.dataclass(frozen=True)
class RecreateJob:
    """The Job is gone while the run is not over: create it again, resuming from the checkpoint."""

    restarts_before: int


@dataclasses.dataclass(frozen=True)
class DeleteJob:
    """ttlSecondsAfterFinished has passed: remove the Job and its pods (never the AgentRun)."""


Action = SetJobSuspended | DeletePod | RecreateJob | DeleteJob | RemoveJobWhileWaiting | ResumeAfterApproval


@dataclasses.dataclass(frozen=True)
class EventNote:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class RunContext:
    owner: RunOwner
    generation: int
    spec: AgentRunSpec
    settings: OperatorSettings
    now: datetime
    # When the operator last (re)created the Job, or resumed or restarted the run: a missing Job or
    # a silent runner is judged only after this, so a watch that lags behind a create is no loss.
    clock_reset_at: datetime | None = None
    # The pod of the last report already seen, to tell a resumed runner from the same one.
    previous_report_pod: str = ""
    job_deleted_for_ttl: bool = False


@dataclasses.dataclass
class Decision:
    status: AgentRunStatus
    actions: list[Action] = dataclasses.field(default_factory=list)
    events: list[EventNote] = dataclasses.field(default_factory=list)
    recheck_after: float | None = None  # seconds until a deadline needs another look


class Urgency(enum.Enum):
    NONE = "none"
    PROGRESS = "progress"  # rate-limited
    NOW = "now"  # phase, conditions, restarts, result: written at once


def set_condition(
    status: AgentRunStatus, kind: str, value: bool, reason: str, message: str, *, now: datetime, generation: int
) -> None:
    """Set a condition; its lastTransitionTime moves only when its status does."""
    text = "True" if value else "False"
    index = next((i for i, existing in enumerate(status.conditions) if existing.type == kind), None)
    previous = None if index is None else status.conditions[index]
    condition = Condition(
        type=kind,
        status=text,
        reason=reason,
        message=message,
        last_transition_time=previous.last_transition_time if previous is not None and previous.status == text else now,
        observed_generation=generation,
    )
    if index is None:
        status.conditions.append(condition)
    else:
        status.conditions[index] = condition


def condition_of(status: AgentRunStatus, kind: str) -> Condition | None:
    return next((cond for cond in status.conditions if cond.type == kind), None)


def stream_url(owner: RunOwner, spec: AgentRunSpec, settings: OperatorSettings) -> str:
    if not spec.streaming.enabled:
        return ""
    if settings.stream_base_url:
        return f"{settings.stream_base_url}/runs/{owner.namespace}/{owner.name}/events"
    return f"http://{stream_service_name(owner.name)}.{owner.namespace}.svc:{contract.STREAM_PORT}/events"


def _mirror_progress(
    status: AgentRunStatus, observed: Observed, ctx: RunContext, *, ended: bool
) -> contract.ProgressReport | None:
    """Copy the facts of the runner's report into the status; return the report.

    Once the run has ended, only the runner's account of the end (a report with its outcome) replaces the
    message: a runner stopped by the end (its Job suspended) reports that a next pod resumes, which never
    happens to an ended run."""
    report = observed.report_for(ctx.owner.uid)
    may_rewrite_message = not ended or (report is not None and report.outcome is not None)
    if report is not None:
        status.iteration = report.iteration
        status.usage = report.usage
        status.queue_wait = report.queue_wait
        status.elapsed_seconds = int(report.elapsed_seconds)
        if report.last_checkpoint is not None:
            status.last_checkpoint = CheckpointInfo.model_validate(report.last_checkpoint.model_dump())
        if report.result is not None:
            status.result = Result(summary=report.result.summary, ref=report.result.ref, bytes=report.result.bytes)
        if report.message and may_rewrite_message:
            status.message = report.message
        if report.started_at is not None and (status.start_time is None or report.started_at < status.start_time):
            status.start_time = report.started_at
    elif observed.progress is not None and observed.progress.error and may_rewrite_message:
        status.message = observed.progress.error
    status.progress = f"{status.iteration}/{ctx.spec.max_iterations}"
    return report


def _result_note(status: AgentRunStatus) -> str:
    """What an ended run's message says of its result: what status.result holds, nothing more."""
    if status.result is not None:
        return "the result so far is kept"
    return "no result is stored: the run ended before the agent's final answer"


def _restarts(status: AgentRunStatus, job: JobObservation | None) -> int:
    if job is None:
        return status.restarts
    return max(status.restarts, job.restarts_before + job.failed)


def _job_failure(job: JobObservation) -> tuple[Phase, str, str] | None:
    failed = job.condition_true("Failed")
    if failed is None:
        return None
    if failed.reason == "DeadlineExceeded":
        return (
            Phase.TIMED_OUT,
            c.REASON_DEADLINE_EXCEEDED,
            "the Job's activeDeadlineSeconds passed before the runner reported an outcome",
        )
    if failed.reason == "BackoffLimitExceeded":
        return (
            Phase.FAILED,
            c.REASON_BACKOFF_LIMIT,
            "the runner failed more often than spec.retries.maxRestarts allows; see the runner pods' logs",
        )
    if failed.reason == "PodFailurePolicy":
        return (
            Phase.FAILED,
            c.REASON_INVALID_SPEC,
            f"the runner rejected its configuration (exit code {contract.EXIT_INVALID_CONFIG}); its pod log names the field",
        )
    return Phase.FAILED, failed.reason or c.REASON_RUNNER_LOST, failed.message or "the runner Job failed"


def _seconds_since(moment: datetime | None, now: datetime) -> float:
    return float("inf") if moment is None else (now - moment).total_seconds()


def run_deadline(status: AgentRunStatus, spec: AgentRunSpec) -> datetime | None:
    """clockStartTime + maxExecutionTime + the ended waits for approval (read from the spec, so an edit
    applies); None before acceptance.

    A status written before clockStartTime existed started its clock when the run was accepted."""
    start = status.budget.clock_start_time if status.budget is not None else None
    if start is None:
        accepted = condition_of(status, c.ACCEPTED)
        start = accepted.last_transition_time if accepted is not None and accepted.status == "True" else None
    if start is None:
        return None
    waited = status.budget.waited_seconds if status.budget is not None else 0
    return start + timedelta(seconds=math.ceil(parse_duration(spec.max_execution_time)) + waited)


def decide(current: AgentRunStatus, observed: Observed, ctx: RunContext) -> Decision:
    decision = _decide(current, observed, ctx)
    deadline = run_deadline(decision.status, ctx.spec)
    phase = decision.status.phase
    if deadline is not None and not (phase is not None and phase.terminal) and not approvals.waiting(decision.status):
        # Look again at the deadline at the latest, even if no pod ever reports.
        left = max((deadline - ctx.now).total_seconds(), 0.0)
        decision.recheck_after = left if decision.recheck_after is None else min(decision.recheck_after, left)
    return decision


def _decide(current: AgentRunStatus, observed: Observed, ctx: RunContext) -> Decision:
    status = current.model_copy(deep=True)
    spec, now = ctx.spec, ctx.now
    status.observed_generation = ctx.generation
    status.job_name = job_name(ctx.owner.name)
    report = _mirror_progress(status, observed, ctx, ended=current.phase is not None and current.phase.terminal)
    job = observed.job
    status.restarts = _restarts(status, job)
    pods = observed.current_pods()
    for pod in pods:
        if pod.start_time is not None and (status.start_time is None or pod.start_time < status.start_time):
            status.start_time = pod.start_time
    decision = Decision(status=status)

    if current.phase is not None and current.phase.terminal:
        _after_end(decision, job, ctx)
        return decision

    def end(phase: Phase, reason: str, message: str, *actions: Action) -> Decision:
        status.phase = next_phase(current.phase, phase)
        status.reason = reason
        status.message = message
        status.completion_time = now
        decision.actions.extend(actions)
        outcome = c.COMPLETE if phase == Phase.SUCCEEDED else c.FAILED
        set_condition(status, outcome, True, reason, message, now=now, generation=ctx.generation)
        set_condition(status, c.RUNNING, False, reason, message, now=now, generation=ctx.generation)
        return decision

    stop = (SetJobSuspended(True),) if job is not None and not job.suspend and not job.deleting else ()
    if spec.cancel:
        return end(
            Phase.CANCELLED, c.REASON_CANCELLED, f"cancelled by spec.cancel at iteration {status.iteration}", *stop
        )
    if report is not None and report.outcome is not None:
        phase, reason = OUTCOME_PHASES[report.outcome]
        message = report.message or f"the runner ended with {report.outcome.value} at iteration {report.iteration}"
        return end(phase, reason, message)
    if report is not None and report.approval_requests:
        approvals.record_requests(status, report.approval_requests)
    if approvals.waiting(status):
        return _wait_for_approval(decision, current, observed, ctx, end)
    ends_at = run_deadline(status, spec)
    if ends_at is not None and now >= ends_at:
        # The runner stops itself before the deadline; this ends a run whose runner cannot (pending, lost, killed).
        return end(
            Phase.TIMED_OUT,
            c.REASON_TIMED_OUT,
            f"maxExecutionTime ({spec.max_execution_time}) ran out at {ends_at.isoformat()}, counted as wall clock "
            f"from the run's acceptance; {_result_note(status)}",
            *stop,
        )
    if spec.token_budget is not None and status.usage.total_tokens > spec.token_budget:
        return end(
            Phase.FAILED,
            c.REASON_TOKEN_BUDGET,
            f"{status.usage.total_tokens} tokens used, over spec.tokenBudget ({spec.token_budget}); {_result_note(status)}",
            *stop,
        )
    if job is not None:
        failure = _job_failure(job)
        if failure is not None:
            return end(*failure)
        if job.condition_true("Complete") is not None or job.succeeded > 0:
            completed = job.completion_time or (
                job.conditions["Complete"].time if "Complete" in job.conditions else None
            )
            waited = _seconds_since(completed, now)
            if waited >= ctx.settings.outcome_grace_seconds:
                return end(
                    Phase.FAILED,
                    c.REASON_RUNNER_LOST,
                    "the runner exited without recording an outcome in its progress report",
                )
            decision.recheck_after = ctx.settings.outcome_grace_seconds - waited
            return decision

    max_restarts = spec.retries.max_restarts
    since_reset = _seconds_since(ctx.clock_reset_at, now)
    if job is None or job.deleting:
        grace = ctx.settings.outcome_grace_seconds
        if job is not None or since_reset < grace:
            decision.recheck_after = max(grace - since_reset, 0.5) if since_reset != float("inf") else grace
            return decision
        if status.restarts >= max_restarts:
            return end(
                Phase.FAILED,
                c.REASON_RUNNER_LOST,
                f"the runner Job {status.job_name} disappeared and no restarts remain (spec.retries.maxRestarts={max_restarts})",
            )
        decision.actions.append(RecreateJob(restarts_before=status.restarts + 1))
        decision.events.append(
            EventNote(
                "Warning",
                c.REASON_RUNNER_LOST,
                f"the runner Job disappeared; recreating it to resume from the checkpoint (restart {status.restarts + 1} of {max_restarts})",
            )
        )
        status.restarts += 1
        status.phase = next_phase(current.phase, Phase.PENDING)
        status.reason = c.REASON_RUNNER_LOST
        return decision

    if spec.suspend:
        if not job.suspend:
            decision.actions.append(SetJobSuspended(True))
        status.phase = next_phase(current.phase, Phase.SUSPENDED)
        status.reason = c.REASON_SUSPENDED
        status.message = (
            f"suspended by spec.suspend at iteration {status.iteration}; set it to false to resume from the checkpoint"
        )
        set_condition(status, c.SUSPENDED, True, c.REASON_SUSPENDED, status.message, now=now, generation=ctx.generation)
        set_condition(status, c.RUNNING, False, c.REASON_SUSPENDED, status.message, now=now, generation=ctx.generation)
        return decision
    if job.suspend:
        decision.actions.append(SetJobSuspended(False))
    if condition_of(status, c.SUSPENDED) is not None:
        set_condition(
            status, c.SUSPENDED, False, c.REASON_RESUMED, "spec.suspend is false", now=now, generation=ctx.generation
        )

    running_pod = next((pod for pod in pods if pod.running), None)
    # The runner's own message (or why its report is unreadable) beats a generic one.
    reported = bool(report and report.message) or bool(observed.progress and observed.progress.error)
    if running_pod is not None:
        status.phase = next_phase(current.phase, Phase.RUNNING)
        status.reason = c.REASON_STARTED
        if not reported:
            status.message = f"runner pod {running_pod.name} is running"
        set_condition(
            status,
            c.RUNNING,
            True,
            c.REASON_STARTED,
            f"runner pod {running_pod.name} is running",
            now=now,
            generation=ctx.generation,
        )
    else:
        status.phase = next_phase(current.phase, Phase.PENDING)
        status.reason = c.REASON_RESUMED if current.phase == Phase.SUSPENDED else c.REASON_PENDING
        # Say why the pod is not running when the kubelet or the scheduler says it: an image that cannot be pulled, a
        # missing Secret, a pod no node takes. The run still ends by its progress deadline and restarts.
        stuck = next((pod for pod in pods if pod.waiting and not pod.deleting), None)
        waiting = f"waiting for runner pod {stuck.name}: {stuck.waiting}" if stuck else WAITING_FOR_POD
        if not reported:
            status.message = waiting + (
                "; it resumes from the checkpoint" if status.iteration or status.restarts else ""
            )
        set_condition(status, c.RUNNING, False, c.REASON_PENDING, waiting, now=now, generation=ctx.generation)

    if report is not None and report.pod != ctx.previous_report_pod and report.resumed_from_iteration is not None:
        decision.events.append(
            EventNote(
                "Normal",
                c.REASON_RESUMED,
                f"runner pod {report.pod} resumed from the checkpoint at iteration {report.resumed_from_iteration}",
            )
        )

    # A runner that stops reporting: replace its pod while restarts remain, then give up.
    deadline = parse_duration(spec.progress_deadline)
    moments = [ctx.clock_reset_at, job.start_time, job.created, report.reported_at if report else None]
    moments += [pod.start_time or pod.created for pod in pods]
    last_sign = max((m for m in moments if m is not None), default=None)
    silent = _seconds_since(last_sign, now)
    if silent < deadline:
        decision.recheck_after = deadline - silent
        return decision
    if status.restarts >= max_restarts:
        return end(
            Phase.FAILED,
            c.REASON_NO_PROGRESS,
            f"no progress report for {int(silent)}s (spec.progressDeadline={spec.progress_deadline}) and no restarts remain",
            *stop,
        )
    live = next((pod for pod in pods if not pod.deleting), None)
    note = f"no progress report for {int(silent)}s (spec.progressDeadline={spec.progress_deadline}); replacing the runner to resume from the checkpoint"
    if live is not None:
        decision.actions.append(DeletePod(live.name))
    else:
        decision.actions.append(RecreateJob(restarts_before=status.restarts + 1))
        status.restarts += 1
    decision.events.append(EventNote("Warning", c.REASON_NO_PROGRESS, note))
    decision.recheck_after = deadline
    return decision


def _wait_for_approval(
    decision: Decision, current: AgentRunStatus, observed: Observed, ctx: RunContext, end: Callable[..., Decision]
) -> Decision:
    """The run stopped at calls that wait for approval: no Job meanwhile, the clock stopped; decisions (or the
    timeout's default) resume it with a new Job from the checkpoint, or end it (onTimeout: Fail)."""
    status, spec, now, job = decision.status, ctx.spec, ctx.now, observed.job
    waiting = approvals.pending(status)
    if waiting:
        approvals.stop_clock(status, min(entry.requested_at for entry in waiting))
    removal = (RemoveJobWhileWaiting(),) if job is not None and not job.deleting else ()
    expired = approvals.apply_decisions(status, observed.approvals, spec.approvals, now)
    if expired is not None:
        approvals.start_clock(status, now)
        message = (
            f"no decision on {approvals.describe(expired)} within spec.approvals.timeout "
            f"({spec.approvals.timeout if spec.approvals else '0s'}) and spec.approvals.onTimeout is Fail; "
            f"{_result_note(status)}"
        )
        set_condition(
            status,
            c.WAITING_FOR_APPROVAL,
            False,
            c.REASON_APPROVAL_TIMED_OUT,
            message,
            now=now,
            generation=ctx.generation,
        )
        return end(Phase.FAILED, c.REASON_APPROVAL_TIMED_OUT, message, *removal)
    decision.actions.extend(removal)
    waiting = approvals.pending(status)
    if waiting or job is not None:
        message = (
            approvals.waiting_message(ctx.owner.name, waiting)
            if waiting
            else "every waiting call is decided; resuming once the stopped runner's Job is gone"
        )
        status.phase = next_phase(current.phase, Phase.WAITING_FOR_APPROVAL)
        status.reason = c.REASON_APPROVAL_REQUESTED
        status.message = message
        set_condition(
            status,
            c.WAITING_FOR_APPROVAL,
            True,
            c.REASON_APPROVAL_REQUESTED,
            message,
            now=now,
            generation=ctx.generation,
        )
        set_condition(
            status, c.RUNNING, False, c.REASON_APPROVAL_REQUESTED, message, now=now, generation=ctx.generation
        )
        rechecks = [approvals.next_timeout_seconds(status, spec.approvals, now)]
        rechecks.append(1.0 if job is not None else None)  # the Job's deletion is watched; this is a safety net
        decision.recheck_after = min((r for r in rechecks if r is not None), default=None)
        return decision
    approvals.start_clock(status, now)
    deadline = run_deadline(status, spec)
    # A run that waited was accepted: it has a budget and a deadline.
    assert deadline is not None
    assert status.budget is not None
    status.budget.deadline = deadline
    decision.actions.append(
        ResumeAfterApproval(
            decisions=approvals.runner_decisions(status), deadline=deadline, restarts_before=status.restarts
        )
    )
    message = (
        f"every waiting call is decided; a new runner pod resumes from the checkpoint (waited "
        f"{status.budget.waited_seconds}s in all, deadline moved to {deadline.isoformat()})"
    )
    status.phase = next_phase(current.phase, Phase.PENDING)
    status.reason = c.REASON_APPROVAL_DECIDED
    status.message = message
    set_condition(
        status, c.WAITING_FOR_APPROVAL, False, c.REASON_APPROVAL_DECIDED, message, now=now, generation=ctx.generation
    )
    return decision


def _after_end(decision: Decision, job: JobObservation | None, ctx: RunContext) -> None:
    """A finished run only waits for its TTL: then its Job and pods go, its status and result stay."""
    ttl = ctx.spec.ttl_seconds_after_finished
    completed = decision.status.completion_time
    if ttl is None or completed is None or job is None or job.deleting or ctx.job_deleted_for_ttl:
        return
    due = completed + timedelta(seconds=ttl)
    if ctx.now >= due:
        decision.actions.append(DeleteJob())
    else:
        decision.recheck_after = (due - ctx.now).total_seconds()


def _key_facts(status: AgentRunStatus) -> tuple[object, ...]:
    return (
        status.phase,
        status.reason,
        status.restarts,
        status.job_name,
        status.stream_url,
        status.observed_generation,
        status.completion_time,
        status.result,
        status.budget,
        status.notification,
        tuple((entry.call, entry.decision, entry.notification) for entry in status.approvals),
        tuple((cond.type, cond.status, cond.reason) for cond in status.conditions),
    )


def write_urgency(old: AgentRunStatus, new: AgentRunStatus) -> Urgency:
    if old == new:
        return Urgency.NONE
    if _key_facts(old) != _key_facts(new):
        return Urgency.NOW
    return Urgency.PROGRESS


def _checkpoint_milestone(old: int, new: int, spec: AgentRunSpec) -> bool:
    """The first checkpoint, then one per tenth of maxIterations: a run of any length tells
    `kubectl describe` about a dozen checkpoints, not one Event per iteration."""
    if new <= old:
        return False
    step = max(1, spec.max_iterations // CHECKPOINT_EVENTS_PER_RUN)
    return old < 0 or new // step > old // step or new >= spec.max_iterations


def transition_events(old: AgentRunStatus, new: AgentRunStatus, spec: AgentRunSpec) -> list[EventNote]:
    """The Events a written status change is worth, each said once."""
    events: list[EventNote] = []
    if new.phase != old.phase:
        if new.phase == Phase.RUNNING:
            events.append(
                EventNote(
                    "Normal", c.REASON_STARTED, f"runner started at iteration {new.iteration} of {spec.max_iterations}"
                )
            )
        elif new.phase == Phase.SUSPENDED:
            events.append(EventNote("Normal", c.REASON_SUSPENDED, new.message))
        elif new.phase == Phase.WAITING_FOR_APPROVAL:
            events.append(EventNote("Normal", c.REASON_APPROVAL_REQUESTED, new.message))
        elif old.phase == Phase.SUSPENDED and new.phase in (Phase.PENDING, Phase.RUNNING):
            events.append(EventNote("Normal", c.REASON_RESUMED, "spec.suspend is false; resuming from the checkpoint"))
        elif new.phase is not None and new.phase.terminal:
            kind = "Normal" if new.phase == Phase.SUCCEEDED else "Warning"
            events.append(EventNote(kind, new.reason, f"run ended {new.phase.value}: {new.message}"))
    decided_before = {entry.call for entry in old.approvals if entry.decision}
    for entry in new.approvals:
        if entry.decision and entry.call not in decided_before:
            events.append(EventNote("Normal", c.REASON_APPROVAL_DECIDED, approvals.decision_message(entry)))
    old_ckpt = old.last_checkpoint.iteration if old.last_checkpoint else -1
    if new.last_checkpoint is not None and _checkpoint_milestone(old_ckpt, new.last_checkpoint.iteration, spec):
        events.append(
            EventNote(
                "Normal",
                "Checkpointed",
                f"checkpoint at iteration {new.last_checkpoint.iteration} ({new.last_checkpoint.bytes} bytes)",
            )
        )
    if new.restarts > old.restarts:
        events.append(
            EventNote(
                "Warning",
                "Restarted",
                f"runner replaced (restart {new.restarts} of {spec.retries.max_restarts}); resuming from the last checkpoint",
            )
        )
    budget = spec.token_budget
    if budget is not None:
        threshold = budget * TOKEN_BUDGET_WARNING_SHARE
        if old.usage.total_tokens <= threshold < new.usage.total_tokens <= budget:
            events.append(
                EventNote(
                    "Warning",
                    "TokenBudgetNearlyUsed",
                    f"{new.usage.total_tokens} of {budget} tokens (spec.tokenBudget) used",
                )
            )
    return events
