"""Runs that wait for approval (spec.approvals): the operator's bookkeeping of requests, decisions and the
stopped clock. Pure; ``status_sync`` decides with it and ``reconcile`` carries the actions out.

The runner stops at a call that needs a decision and reports the request; the operator records it in
``status.approvals``, removes the finished Job (a waiting run holds no pod), and stops the run's clock
(``budget.waitingSince``). A decision is an AgentRunApproval a person created (``agentrun_api.approval``), or
``spec.approvals.onTimeout`` once ``spec.approvals.timeout`` has passed. Once every waiting call is decided,
the wait is added to ``budget.waitedSeconds``, the deadline moves later by as much, and a new Job resumes the run
from its checkpoint with the decisions (not counted as a restart).
"""

import dataclasses
import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from agentrun_api import approval, contract
from agentrun_api.spec import ApprovalsSpec
from agentrun_api.status import AgentRunStatus, ApprovalRequest
from agentrun_common.durations import parse_duration
from agentrun_operator.observations import ApprovalObservation


@dataclasses.dataclass(frozen=True)
class RemoveJobWhileWaiting:
    """The runner stopped for approval: delete its Job (and so its pods); the run holds none while it waits."""


@dataclasses.dataclass(frozen=True)
class ResumeAfterApproval:
    """Every waiting call is decided: hand the runner the decisions and start a Job that resumes the run."""

    decisions: tuple[contract.ApprovalDecision, ...]
    deadline: datetime  # the run's deadline, moved by the waits
    restarts_before: int  # unchanged: a resume after a decision is not a restart


def record_requests(status: AgentRunStatus, requests: Iterable[contract.ApprovalRequest]) -> list[ApprovalRequest]:
    """Add the runner's requests not recorded yet (a report stays in place after its calls were decided)."""
    known = {entry.call for entry in status.approvals}
    added = [
        ApprovalRequest(call=r.key, tool=r.tool, arguments=r.arguments, requested_at=r.requested_at)
        for r in requests
        if r.key not in known
    ]
    status.approvals.extend(added)
    return added


def pending(status: AgentRunStatus) -> list[ApprovalRequest]:
    return [entry for entry in status.approvals if not entry.decision]


def waiting(status: AgentRunStatus) -> bool:
    """The run is stopped for approvals: calls wait, or decided calls wait for their resume."""
    return bool(pending(status)) or (status.budget is not None and status.budget.waiting_since is not None)


def timeout_seconds(spec: ApprovalsSpec | None) -> float:
    return parse_duration(spec.timeout) if spec is not None else 0.0


def apply_decisions(
    status: AgentRunStatus, observed: Iterable[ApprovalObservation], spec: ApprovalsSpec | None, now: datetime
) -> ApprovalRequest | None:
    """Record the decisions on waiting calls: a person's (the first made, for each call), else onTimeout's once
    the timeout has passed. Returns a call whose timeout passed when onTimeout is Fail (nothing decides it)."""
    by_call: dict[str, ApprovalObservation] = {}
    for found in sorted(observed, key=lambda o: (o.created or now, o.name)):
        by_call.setdefault(found.call, found)
    limit = timedelta(seconds=timeout_seconds(spec))
    for entry in pending(status):
        decided = by_call.get(entry.call)
        if decided is not None:
            entry.decision = approval.APPROVED if decided.approved else approval.DENIED
            entry.decided_by = decided.decided_by
            entry.decided_at = decided.created or now
            entry.reason = decided.reason[:1024]
            entry.approval = decided.name
        elif now >= entry.requested_at + limit:
            if spec is not None and spec.on_timeout == "Fail":
                return entry
            entry.decision = approval.DENIED
            entry.decided_at = now
            entry.reason = (
                f"no decision within spec.approvals.timeout ({spec.timeout if spec else '0s'}); "
                "spec.approvals.onTimeout is Deny"
            )
    return None


def next_timeout_seconds(status: AgentRunStatus, spec: ApprovalsSpec | None, now: datetime) -> float | None:
    """Seconds until the first waiting call's timeout, or None when none waits."""
    limit = timedelta(seconds=timeout_seconds(spec))
    due = [entry.requested_at + limit for entry in pending(status)]
    return max((min(due) - now).total_seconds(), 0.0) if due else None


def stop_clock(status: AgentRunStatus, since: datetime) -> None:
    if status.budget is not None and status.budget.waiting_since is None:
        status.budget.waiting_since = since


def start_clock(status: AgentRunStatus, now: datetime) -> None:
    """End the wait: it is added to waitedSeconds (whole seconds, rounded up: the deadline never comes early)."""
    budget = status.budget
    if budget is None or budget.waiting_since is None:
        return
    budget.waited_seconds += max(0, math.ceil((now - budget.waiting_since).total_seconds()))
    budget.waiting_since = None


def runner_decisions(status: AgentRunStatus) -> tuple[contract.ApprovalDecision, ...]:
    """Every decision taken in the run, for the runner's approvals file (a resumed runner needs the latest)."""
    return tuple(
        contract.ApprovalDecision(
            key=entry.call,
            approved=entry.decision == approval.APPROVED,
            reason=entry.reason,
            decided_by=entry.decided_by,
        )
        for entry in status.approvals
        if entry.decision
    )


def describe(entry: ApprovalRequest) -> str:
    return f"{entry.tool} (call {entry.call})"


def waiting_message(run: str, entries: list[ApprovalRequest]) -> str:
    calls = ", ".join(describe(entry) for entry in entries[:3]) + (" ..." if len(entries) > 3 else "")
    return (
        f"waiting for approval of {calls} since {min(e.requested_at for e in entries).isoformat()}; no runner pod "
        f"meanwhile and the maxExecutionTime clock is stopped: kubectl agentrun approve|deny {run}"
    )


def decision_message(entry: ApprovalRequest) -> str:
    who = f"by {entry.decided_by}" if entry.decided_by else "by spec.approvals.onTimeout"
    reason = f": {entry.reason}" if entry.reason else ""
    return f"{describe(entry)} {entry.decision.lower()} {who}{reason}"
