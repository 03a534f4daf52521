"""The AgentRun status: what the operator observed. Written only by the operator, through /status.

Facts are fields; state changes are conditions (Kubernetes API conventions). The phase is a summary
for people and printer columns; the terminal phases never change again.
"""

import enum
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Phase(enum.StrEnum):
    """Where a run stands."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    WAITING_FOR_APPROVAL = "WaitingForApproval"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.TIMED_OUT, Phase.CANCELLED})


class IllegalTransitionError(ValueError):
    """A phase change that would break the rule that an ended run stays ended."""


def next_phase(current: Phase | None, desired: Phase) -> Phase:
    """The phase to record: a terminal phase is final; anything else may move anywhere."""
    if current is not None and current.terminal and desired != current:
        raise IllegalTransitionError(f"the run already ended as {current.value}; it cannot become {desired.value}")
    return desired


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(StatusModel):
    """A condition as in metav1.Condition."""

    type: str = Field(max_length=316, description="Type of condition in CamelCase, for example Complete.")
    status: str = Field(description="True, False or Unknown.", pattern=r"^(True|False|Unknown)$")
    reason: str = Field(max_length=1024, description="Machine-readable reason in CamelCase for the last transition.")
    message: str = Field(default="", max_length=32_768, description="Human-readable details of the last transition.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation the condition was set for."
    )


class CheckpointInfo(StatusModel):
    """The last checkpoint the runner wrote."""

    iteration: int = Field(ge=0, description="Iteration the checkpoint was written at.")
    time: datetime = Field(description="When it was written.")
    bytes: int = Field(ge=0, description="Bytes that checkpoint write added.")
    total_bytes: int | None = Field(default=None, ge=0, description="Bytes of checkpoint state in all.")


class Usage(StatusModel):
    """Tokens used by all model calls so far."""

    prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens.")
    completion_tokens: int = Field(default=0, ge=0, description="Completion tokens.")
    total_tokens: int = Field(default=0, ge=0, description="Prompt plus completion tokens.")


class QueueWait(StatusModel):
    """Time model calls spent waiting for a throttle permit."""

    last_seconds: float = Field(default=0, ge=0, description="Wait of the most recent call.")
    max_seconds: float = Field(default=0, ge=0, description="Longest wait so far.")
    total_seconds: float = Field(default=0, ge=0, description="Sum of all waits.")


class Result(StatusModel):
    """A short summary of the outcome; the full output lives in the checkpoint store."""

    summary: str = Field(default="", max_length=2048, description="The first part of the final answer.")
    ref: str = Field(
        default="", max_length=1024, description="Where the full result is stored, for example configmap/<name>#result."
    )
    bytes: int = Field(default=0, ge=0, description="Size of the full result.")


class Budget(StatusModel):
    """The timeout arithmetic the operator did for this run."""

    worst_case_seconds: int = Field(ge=0, description="maxIterations x (queue wait + request timeout), plus tool time.")
    max_execution_seconds: int = Field(ge=0, description="The run's maxExecutionTime in seconds.")
    fits: bool = Field(description="Whether the worst case fits maxExecutionTime.")
    active_deadline_seconds: int = Field(
        ge=0,
        description="The first Job's activeDeadlineSeconds: maxExecutionTime. A Job created or resumed later "
        "gets only what is left until the deadline, so the hard stop never falls after it.",
    )
    clock_start_time: datetime | None = Field(
        default=None,
        description="When the run's wall clock started: when the operator accepted the run and created its "
        "children. Time pending, suspended or lost to a killed runner all count.",
    )
    deadline: datetime | None = Field(
        default=None,
        description="clockStartTime + maxExecutionTime + waitedSeconds: the run ends TimedOut at this moment. "
        "It moves later by each wait for an approval, once the wait ends.",
    )
    waited_seconds: int = Field(
        default=0,
        ge=0,
        description="Seconds the run spent waiting for approvals (ended waits): its clock stood still meanwhile.",
    )
    waiting_since: datetime | None = Field(
        default=None, description="When the current wait for an approval began; unset while the clock runs."
    )
    # A plain string, not the spec's enum: Helm never upgrades a CRD, and a status write naming a controller
    # an older CRD does not list would be refused whole.
    stream_controller: str | None = Field(
        default=None,
        max_length=63,
        description="The ingress or gateway controller in front of the run's stream, whose timers the "
        "StreamChainFits condition was checked against; unset when the run serves no stream.",
    )


class StreamRoute(StatusModel):
    """The run's own stream route (spec.streaming.ingress), leading to its <run>-stream Service."""

    controller: str = Field(max_length=63, description="The controller whose route objects were created.")
    host: str = Field(max_length=253, description="The host the route serves the stream on.")
    path: str = Field(max_length=64, description="Path of the run's event stream on that host.")
    objects: list[str] = Field(
        default_factory=list, max_length=8, description="The route objects, as Kind/name, owned by the run."
    )


class Notification(StatusModel):
    """Delivery of the completion webhook, kept apart from the run's own phase."""

    event_id: str = Field(default="", max_length=128, description="Id sent with the payload, stable across retries.")
    delivered: bool = Field(default=False, description="Whether a 2xx answer was received.")
    attempts: int = Field(default=0, ge=0, description="Attempts made.")
    last_attempt_time: datetime | None = Field(default=None, description="When the last attempt was made.")
    last_error: str = Field(default="", max_length=1024, description="Why the last attempt failed.")


class ApprovalRequest(StatusModel):
    """A tool call that waits, or waited, for a person's decision."""

    call: str = Field(max_length=128, description="The call's idempotency key, {run uid}:{iteration}:{index}.")
    tool: str = Field(max_length=128, description="The tool the model called.")
    arguments: str = Field(
        default="",
        max_length=2048,
        description="The call's arguments as the model gave them, cut short, with values of secret-like keys "
        "(password, token, apiKey, ...) replaced by [redacted].",
    )
    requested_at: datetime = Field(description="When the runner stopped to wait for the decision.")
    decision: str = Field(default="", max_length=16, description="Approved or Denied; empty while the request waits.")
    decided_by: str = Field(
        default="",
        max_length=512,
        description="The user who decided, as the API server authenticated them when they created the "
        "AgentRunApproval; empty when spec.approvals.onTimeout decided.",
    )
    decided_at: datetime | None = Field(default=None, description="When the decision was taken.")
    reason: str = Field(default="", max_length=1024, description="The reason given with the decision.")
    approval: str = Field(
        default="", max_length=253, description="The AgentRunApproval object that carried the decision."
    )
    notification: Notification | None = Field(default=None, description="Delivery of the request's webhook.")


class AgentRunStatus(StatusModel):
    """The observed state of an AgentRun."""

    phase: Phase | None = Field(
        default=None,
        description="Pending, Running, Suspended, WaitingForApproval, Succeeded, Failed, TimedOut or Cancelled.",
    )
    reason: str = Field(default="", max_length=256, description="Why the run is in its phase, in CamelCase.")
    message: str = Field(default="", max_length=1024, description="The last thing worth telling a person.")
    iteration: int = Field(default=0, ge=0, description="Reasoning loops completed.")
    progress: str = Field(default="", max_length=64, description="iteration/maxIterations, for the PROGRESS column.")
    start_time: datetime | None = Field(default=None, description="When the first runner pod started working.")
    completion_time: datetime | None = Field(default=None, description="When the run ended.")
    elapsed_seconds: int = Field(default=0, ge=0, description="Execution time used, counted across restarts.")
    restarts: int = Field(
        default=0, ge=0, description="Runner pods replaced so far; each resumed from the last checkpoint."
    )
    last_checkpoint: CheckpointInfo | None = Field(default=None, description="The last checkpoint written.")
    usage: Usage = Field(default_factory=Usage, description="Tokens used so far.")
    queue_wait: QueueWait = Field(default_factory=QueueWait, description="Throttle queue waits.")
    result: Result | None = Field(default=None, description="Outcome summary and where the full result lives.")
    stream_url: str = Field(
        default="",
        alias="streamURL",
        max_length=2048,
        description="Where to follow the run's events (Server-Sent Events).",
    )
    job_name: str = Field(default="", max_length=253, description="The Job running the runner.")
    budget: Budget | None = Field(default=None, description="The timeout arithmetic for this run.")
    stream_route: StreamRoute | None = Field(
        default=None, description="The run's own stream route; unset when it reads through the shared route."
    )
    notification: Notification | None = Field(default=None, description="Completion webhook delivery.")
    approvals: list[ApprovalRequest] = Field(
        default_factory=list, description="Tool calls that waited or wait for approval, and their decisions."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations of the run's state.")
    observed_generation: int = Field(default=0, ge=0, description="The spec generation the status reflects.")
