"""The Job controller's decisions, as pure functions over Job and Pod objects (batch/v1 semantics)."""

from dataclasses import dataclass
from typing import Literal

from tests.harness.nodeagent.kube import JsonObject

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"

DEFAULT_BACKOFF_LIMIT = 6

# Reasons and messages as the Kubernetes Job controller writes them.
BACKOFF_LIMIT_EXCEEDED = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
DEADLINE_EXCEEDED = ("DeadlineExceeded", "Job was active longer than specified deadline")
COMPLETIONS_REACHED = ("CompletionsReached", "Reached expected number of succeeded pods")
SUSPENDED = ("JobSuspended", "Job suspended")
RESUMED = ("JobResumed", "Job resumed")

Action = Literal["FailJob", "Ignore", "Count"]


@dataclass(frozen=True)
class PolicyVerdict:
    action: Action
    message: str


def _condition_true(conditions: list[JsonObject] | None, type_: str) -> JsonObject | None:
    for entry in conditions or []:
        if entry.get("type") == type_ and entry.get("status") == "True":
            return entry
    return None


def job_condition(job: JsonObject, type_: str) -> JsonObject | None:
    return _condition_true((job.get("status") or {}).get("conditions"), type_)


def is_finished(job: JsonObject) -> bool:
    return job_condition(job, "Complete") is not None or job_condition(job, "Failed") is not None


def pod_is_terminal(pod: JsonObject) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _exit_codes(pod: JsonObject, container_name: str | None) -> list[tuple[str, int]]:
    codes = []
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    statuses = statuses + ((pod.get("status") or {}).get("initContainerStatuses") or [])
    for status in statuses:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated is not None and (container_name is None or status.get("name") == container_name):
            codes.append((str(status.get("name")), int(terminated.get("exitCode", 0))))
    return codes


def evaluate_pod_failure_policy(job: JsonObject, pod: JsonObject) -> PolicyVerdict:
    """Which rule of spec.podFailurePolicy a failed pod matches (first match wins); Count when none."""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    pod_name = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
    for index, rule in enumerate(rules):
        action = rule.get("action", "Count")
        on_exit = rule.get("onExitCodes")
        if on_exit is not None:
            values = set(on_exit.get("values") or [])
            for container, code in _exit_codes(pod, on_exit.get("containerName")):
                if code == 0:
                    continue  # exit code 0 never matches: the container succeeded
                matched = code in values if on_exit.get("operator", "In") == "In" else code not in values
                if matched:
                    message = (
                        f"Container {container} for pod {pod_name} failed with exit code {code} "
                        f"matching {action} rule at index {index}"
                    )
                    return PolicyVerdict(action, message)
        for pattern in rule.get("onPodConditions") or []:
            found = (
                _condition_true((pod.get("status") or {}).get("conditions"), pattern["type"])
                if pattern.get("status", "True") == "True"
                else None
            )
            if found is not None:
                message = f"Pod {pod_name} has condition {pattern['type']} matching {action} rule at index {index}"
                return PolicyVerdict(action, message)
    return PolicyVerdict("Count", "")


def set_condition(conditions: list[JsonObject], new: JsonObject) -> list[JsonObject]:
    """Replace the condition of new's type; keep lastTransitionTime when the status did not change."""
    result = []
    replaced = False
    for entry in conditions:
        if entry.get("type") == new["type"]:
            replaced = True
            if entry.get("status") == new["status"] and entry.get("reason") == new.get("reason"):
                result.append(entry)
            else:
                result.append(new)
        else:
            result.append(entry)
    if not replaced:
        result.append(new)
    return result


def owned_by(pod: JsonObject, job: JsonObject) -> bool:
    """Whether the pod belongs to the Job: its controller reference, or the job-name label if the
    API server gives no uids."""
    metadata = pod.get("metadata") or {}
    job_meta = job["metadata"]
    if metadata.get("namespace") != job_meta.get("namespace"):
        return False
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Job" and ref.get("name") == job_meta["name"]:
            return not job_meta.get("uid") or not ref.get("uid") or ref.get("uid") == job_meta.get("uid")
    return False


def _completions(spec: JsonObject) -> int | None:
    # The API server defaults completions to 1 when neither completions nor parallelism is set.
    completions = spec.get("completions", None if "parallelism" in spec else 1)
    return None if completions is None else int(completions)


def wanted_active(job: JsonObject, succeeded: int) -> int:
    """Pods the Job wants running now (NonIndexed completion mode)."""
    spec = job.get("spec") or {}
    parallelism = int(spec.get("parallelism", 1))
    completions = _completions(spec)
    if completions is None:
        # Work-queue Jobs: once one pod succeeded, no new pods start.
        return 0 if succeeded > 0 else parallelism
    return max(0, min(parallelism, int(completions) - succeeded))


def success_reached(job: JsonObject, succeeded: int, active: int) -> bool:
    completions = _completions(job.get("spec") or {})
    if completions is None:
        return succeeded > 0 and active == 0
    return succeeded >= completions
