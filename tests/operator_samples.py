"""Sample AgentRun manifests and observed children for the operator's tests."""

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from agentrun_api import constants

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


BASE_SPEC: dict[str, Any] = {
    "instructions": "You are a careful researcher.",
    "input": "Compare the three vendors.",
    "model": {"name": "gpt-4.1-mini", "apiKeySecretRef": {"name": "openai", "key": "api-key"}, "requestTimeout": "30s"},
    "maxExecutionTime": "30m",
    "maxIterations": 50,
}


def manifest(name: str = "q3", namespace: str = "team-a", uid: str = "uid-q3", **spec_overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(spec_overrides)
    return {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1},
        "spec": spec,
    }


def job_object(
    *,
    uid: str = "job-uid-1",
    created: datetime = T0,
    suspend: bool = False,
    active: int = 0,
    failed: int = 0,
    succeeded: int = 0,
    conditions: list[dict[str, Any]] | None = None,
    restarts_before: int = 0,
    completion: datetime | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"active": active, "failed": failed, "succeeded": succeeded, "startTime": iso(created)}
    if conditions:
        status["conditions"] = conditions
    if completion:
        status["completionTime"] = iso(completion)
    return {
        "metadata": {
            "name": "q3-runner",
            "uid": uid,
            "creationTimestamp": iso(created),
            "annotations": {f"{constants.GROUP}/restarts-before": str(restarts_before)},
        },
        "spec": {"suspend": suspend},
        "status": status,
    }


def pod_object(
    name: str = "q3-runner-abcde",
    *,
    job_uid: str = "job-uid-1",
    phase: str = "Running",
    created: datetime = T0,
    deleting: bool = False,
    exit_code: int | None = None,
    waiting: tuple[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "creationTimestamp": iso(created),
        "ownerReferences": [{"kind": "Job", "name": "q3-runner", "uid": job_uid, "apiVersion": "batch/v1"}],
    }
    if deleting:
        meta["deletionTimestamp"] = iso(created)
    status: dict[str, Any] = {"phase": phase, "startTime": iso(created)}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "runner", "state": {"terminated": {"exitCode": exit_code}}}]
    if waiting is not None:
        reason, message = waiting
        status["containerStatuses"] = [{"name": "runner", "state": {"waiting": {"reason": reason, "message": message}}}]
    return {"metadata": meta, "status": status}


def progress_document(
    *, iteration: int, reported: datetime, run_uid: str = "uid-q3", pod: str = "q3-runner-abcde", **extra: Any
) -> dict[str, Any]:
    return {"runUid": run_uid, "pod": pod, "iteration": iteration, "reportedAt": reported.isoformat(), **extra}
