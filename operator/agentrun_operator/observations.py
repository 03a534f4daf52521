"""What the operator sees of a run's Job, pods and progress report, distilled from raw objects.

The index handlers turn every watched Job, Pod and progress ConfigMap into one of these small frozen
records; the status computation reads only these, so it can be tested without a server.
"""

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pydantic

from agentrun_api import contract
from agentrun_operator.children import RESTARTS_BEFORE_ANNOTATION, RUNNER_CONTAINER


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclasses.dataclass(frozen=True)
class JobCondition:
    status: str
    reason: str
    message: str
    time: datetime | None


@dataclasses.dataclass(frozen=True)
class JobObservation:
    name: str
    uid: str
    created: datetime | None
    deleting: bool
    suspend: bool
    active: int
    failed: int
    succeeded: int
    start_time: datetime | None
    completion_time: datetime | None
    restarts_before: int
    conditions: Mapping[str, JobCondition]

    @classmethod
    def from_object(cls, job: Mapping[str, Any]) -> "JobObservation":
        meta = job.get("metadata", {})
        spec = job.get("spec", {})
        status = job.get("status") or {}
        conditions = {
            c["type"]: JobCondition(
                status=c.get("status", "Unknown"),
                reason=c.get("reason", ""),
                message=c.get("message", ""),
                time=parse_time(c.get("lastTransitionTime")),
            )
            for c in status.get("conditions") or []
            if "type" in c
        }
        try:
            restarts_before = int((meta.get("annotations") or {}).get(RESTARTS_BEFORE_ANNOTATION, "0"))
        except ValueError:
            restarts_before = 0
        return cls(
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            created=parse_time(meta.get("creationTimestamp")),
            deleting=bool(meta.get("deletionTimestamp")),
            suspend=bool(spec.get("suspend", False)),
            active=int(status.get("active") or 0),
            failed=int(status.get("failed") or 0),
            succeeded=int(status.get("succeeded") or 0),
            start_time=parse_time(status.get("startTime")),
            completion_time=parse_time(status.get("completionTime")),
            restarts_before=restarts_before,
            conditions=conditions,
        )

    def condition_true(self, kind: str) -> JobCondition | None:
        condition = self.conditions.get(kind)
        return condition if condition is not None and condition.status == "True" else None


# Waiting reasons of a container on its normal way to running: nothing to tell the user about.
_STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
_WAITING_MESSAGE_LIMIT = 300


def _reason_and_message(reason: str, message: str) -> str:
    text = f"{reason}: {message}" if message else reason
    return text if len(text) <= _WAITING_MESSAGE_LIMIT else text[: _WAITING_MESSAGE_LIMIT - 3] + "..."


@dataclasses.dataclass(frozen=True)
class PodObservation:
    name: str
    job_uid: str
    phase: str
    created: datetime | None
    start_time: datetime | None
    deleting: bool
    exit_code: int | None
    disrupted: bool
    # Why the runner container has not started, as the kubelet or the scheduler says it ("ImagePullBackOff:
    # Back-off pulling image ..."); empty while it is only being created.
    waiting: str = ""

    @classmethod
    def from_object(cls, pod: Mapping[str, Any]) -> "PodObservation":
        meta = pod.get("metadata", {})
        status = pod.get("status") or {}
        job_uid = next(
            (ref.get("uid", "") for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "Job"), ""
        )
        exit_code: int | None = None
        waiting = ""
        for container in status.get("containerStatuses") or []:
            if container.get("name") == RUNNER_CONTAINER:
                state = container.get("state") or {}
                terminated = state.get("terminated")
                if terminated is not None:
                    exit_code = terminated.get("exitCode")
                reason = (state.get("waiting") or {}).get("reason", "")
                if reason and reason not in _STARTING_REASONS:
                    waiting = _reason_and_message(reason, state["waiting"].get("message", ""))
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                waiting = waiting or _reason_and_message("Unschedulable", condition.get("message", ""))
        disrupted = any(
            c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        return cls(
            name=meta.get("name", ""),
            job_uid=job_uid,
            phase=status.get("phase", "Pending"),
            created=parse_time(meta.get("creationTimestamp")),
            start_time=parse_time(status.get("startTime")),
            deleting=bool(meta.get("deletionTimestamp")),
            exit_code=exit_code,
            disrupted=disrupted,
            waiting=waiting,
        )

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting


@dataclasses.dataclass(frozen=True)
class ProgressObservation:
    """The runner's last report, or why it could not be read."""

    report: contract.ProgressReport | None
    error: str = ""

    @classmethod
    def from_object(cls, config_map: Mapping[str, Any]) -> "ProgressObservation":
        raw = (config_map.get("data") or {}).get(contract.PROGRESS_KEY)
        if not raw:
            return cls(report=None)
        try:
            return cls(report=contract.ProgressReport.model_validate(json.loads(raw)))
        except (ValueError, pydantic.ValidationError) as error:
            # Never echo the payload: only the first problem's location and kind.
            detail = (
                error.errors()[0] if isinstance(error, pydantic.ValidationError) else {"loc": (), "msg": "not JSON"}
            )
            where = ".".join(str(part) for part in detail["loc"]) or "the document"
            return cls(report=None, error=f"unreadable progress report ({where}: {detail['msg']})")


@dataclasses.dataclass(frozen=True)
class ApprovalObservation:
    """An AgentRunApproval: a person's decision on one call (its creator checked by admission)."""

    name: str
    call: str
    approved: bool
    reason: str
    decided_by: str
    created: datetime | None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "ApprovalObservation | None":
        metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        if not isinstance(spec.get("call"), str) or spec.get("decision") not in ("Approve", "Deny"):
            return None  # not one the CRD would admit; nothing to act on
        return cls(
            name=str(metadata.get("name") or ""),
            call=spec["call"],
            approved=spec["decision"] == "Approve",
            reason=str(spec.get("reason") or ""),
            decided_by=str(spec.get("decidedBy") or ""),
            created=parse_time(metadata.get("creationTimestamp")),
        )


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything observed of one run's children at one moment."""

    job: JobObservation | None = None
    pods: tuple[PodObservation, ...] = ()
    progress: ProgressObservation | None = None
    approvals: tuple[ApprovalObservation, ...] = ()

    def current_pods(self) -> list[PodObservation]:
        """Pods of the current Job, newest first."""
        if self.job is None:
            return []
        mine = [p for p in self.pods if p.job_uid == self.job.uid]
        return sorted(mine, key=lambda p: p.created.timestamp() if p.created else 0.0, reverse=True)

    def report_for(self, run_uid: str) -> contract.ProgressReport | None:
        """The runner's report, when it is about this run (not an earlier run of the same name)."""
        if self.progress is None or self.progress.report is None:
            return None
        return self.progress.report if self.progress.report.run_uid == run_uid else None
