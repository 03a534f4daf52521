"""The contract between the operator and the runner, defined once and tested from both sides.

Config in:  the operator renders a ``RunnerConfig`` as JSON into the ConfigMap ``<run>-runner-config``,
            mounted read-only at ``CONFIG_MOUNT_PATH``; secrets arrive only as env vars from Secret refs.
Progress out: the runner writes a ``ProgressReport`` as JSON under ``PROGRESS_KEY`` of the ConfigMap
            ``<run>-progress`` (at most once per ``progressIntervalSeconds``, and at once for a terminal
            outcome); the operator watches those ConfigMaps and mirrors them into the AgentRun status.
Decisions in: the operator writes the approval decisions taken so far as JSON (a list of ``ApprovalDecision``)
            under ``APPROVALS_FILE`` of the same ConfigMap before it starts the Job that resumes a run which
            waited; the runner reads that file next to its config.
Exit codes: 0 means the run reached an outcome that is recorded in the progress report, or stopped to wait
            for approvals that the report lists (the Job completes; the operator removes it); anything
            else is a crash the Job replaces (resuming from the checkpoint), except ``EXIT_INVALID_CONFIG``
            which the Job's pod failure policy turns into a failed Job at once.

The runner never writes the AgentRun, so the operator is the status's only writer and the user's
spec is never touched.
"""

import enum
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from agentrun_api.mcpserver import DiscoveredTool
from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import CheckpointInfo, QueueWait, Usage

CONFIG_MOUNT_PATH: Final = "/etc/agentrun"
CONFIG_FILE: Final = "run.json"
CONFIG_ENV: Final = "AGENTRUN_CONFIG"  # path of the config file; the Job sets it to the mounted file
API_KEY_ENV: Final = "OPENAI_API_KEY"  # the official SDK reads this name
STREAM_TOKEN_ENV: Final = "AGENTRUN_STREAM_TOKEN"
# The runner's credential at the permit server: its own random key in the Secret <run>-permit-key, mounted
# only into the runner pod. Never the stream token, which every reader of the run's stream holds.
PERMIT_KEY_ENV: Final = "AGENTRUN_PERMIT_KEY"
POD_NAME_ENV: Final = "POD_NAME"
# Tool credentials (header values of the MCP servers and HTTP tools a run uses): one env var each, from
# the Secret key the MCPServer or the run names, numbered in the order RunnerConfig lists the headers.
TOOL_CREDENTIAL_ENV_PREFIX: Final = "AGENTRUN_TOOL_CREDENTIAL_"
# The run's absolute deadline (ISO 8601, UTC): wall clock across restarts, the same for every pod of the run.
DEADLINE_ENV: Final = "AGENTRUN_DEADLINE"
# The pod's own IP (downward API status.podIP): the runner binds its stream server there, the address
# the <run>-stream Service's endpoints point at.
POD_IP_ENV: Final = "POD_IP"
APPROVALS_FILE: Final = "approvals.json"
PROGRESS_KEY: Final = "progress.json"
STREAM_TOKEN_KEY: Final = "token"
PERMIT_KEY_KEY: Final = "key"
CHECKPOINT_MOUNT_PATH: Final = "/var/lib/agentrun/checkpoint"  # PVC store
WORKSPACE_PATH: Final = "/var/lib/agentrun/workspace"  # emptyDir; its files are part of the checkpoint
STREAM_PORT: Final = 8080
STREAM_PORT_NAME: Final = "stream"

EXIT_OUTCOME_RECORDED: Final = 0
EXIT_INVALID_CONFIG: Final = 3

# The ConfigMap checkpoint store: a ConfigMap holds at most 1 MiB, so state is spread over
# append-only segment ConfigMaps named <run>-ckpt-<n>. The cap keeps the runner's RBAC a finite
# list of names; past it the runner fails with CheckpointError and says to use the PVC store.
CONFIGMAP_SEGMENT_LIMIT_BYTES: Final = 900 * 1024  # headroom under 1 MiB for keys and metadata
CONFIGMAP_MAX_SEGMENTS: Final = 36  # 36 x 900 KiB, about 32 MiB of checkpoint state


# The event-log archive of an ended run whose checkpoint is on a PVC (which the stream gateway cannot
# mount): the runner writes its whole event log, compressed, into ConfigMaps <run>-events-<n> once the
# run has ended, so the gateway can replay it until the run is deleted. The cap keeps the runner's
# RBAC a finite list of names and the archive bounded (8 x 900 KiB of base64, about 5 MiB compressed).
EVENTS_ARCHIVE_MAX_SEGMENTS: Final = 8


def runner_config_name(run: str) -> str:
    return f"{run}-runner-config"


def progress_name(run: str) -> str:
    return f"{run}-progress"


def checkpoint_segment_name(run: str, index: int) -> str:
    return f"{run}-ckpt-{index}"


def events_archive_name(run: str, index: int) -> str:
    return f"{run}-events-{index}"


def stream_token_secret_name(run: str) -> str:
    return f"{run}-stream-token"


def permit_key_secret_name(run: str) -> str:
    return f"{run}-permit-key"


def tool_credential_env(index: int) -> str:
    return f"{TOOL_CREDENTIAL_ENV_PREFIX}{index}"


class ContractModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class HeaderFromEnv(ContractModel):
    """A header whose value the runner reads from its environment, where the Job puts the Secret key named
    here (a reference, never the value: the config is a ConfigMap)."""

    name: str
    env: str
    secret_name: str
    secret_key: str


class MCPServerConfig(ContractModel):
    """One MCPServer a run uses, resolved by the operator: endpoint, credentials' env vars, and the
    tools the run may call as the server listed them (so every pod of the run offers the same tools)."""

    name: str
    url: str
    timeout_seconds: float = Field(gt=0)
    headers: list[HeaderFromEnv] = Field(default_factory=list)
    tools: list[DiscoveredTool] = Field(default_factory=list)


class ToolNetwork(ContractModel):
    """Where MCP and HTTP tool calls may connect, from the operator's policy."""

    # Loopback addresses (127.0.0.0/8, ::1) are refused unless the platform allows them; link-local
    # ones (cloud metadata endpoints) always are.
    allow_loopback: bool = False


class RunIdentity(ContractModel):
    namespace: str
    name: str
    uid: str  # idempotency keys are {uid}:{step}:{call index}, so a recreated run never reuses one


class CheckpointLocation(ContractModel):
    store: Literal["ConfigMap", "PersistentVolumeClaim"]
    # ConfigMap store: segment names are checkpoint_segment_name(run, n) for n < max_segments.
    max_segments: int = CONFIGMAP_MAX_SEGMENTS
    # PVC store: where the claim is mounted in the runner container.
    mount_path: str = CHECKPOINT_MOUNT_PATH


class RunnerConfig(ContractModel):
    """Everything the runner needs besides secrets; rendered by the operator, read by the runner."""

    run: RunIdentity
    spec: AgentRunSpec
    checkpoint: CheckpointLocation
    workspace_path: str = WORKSPACE_PATH
    stream_port: int = STREAM_PORT
    # Seconds the stream server keeps an idle keep-alive connection; the operator derives it from the
    # stream gateway's connection pool (stream_timeouts.runner_server_timeouts), so the gateway always
    # closes an idle pooled connection before the runner does (no 502 race on reuse).
    stream_keep_alive_seconds: float = Field(default=50.0, gt=0)
    # Seconds between progress reports; the operator's status writes are bounded separately.
    progress_interval_seconds: float = Field(default=2.0, gt=0)
    # The runner stops itself this long before the run's deadline, so it can checkpoint and record
    # TimedOut before the Job's activeDeadlineSeconds kills it (at most a quarter of a short budget).
    soft_deadline_margin_seconds: float = Field(default=10.0, ge=0)
    # Throttle pool server (cluster-wide pools); None means the runner's own in-process limiter.
    permit_server_url: str | None = None
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list)
    # Headers of spec.tools.http[] by tool name; values from the env vars named.
    http_tool_headers: dict[str, list[HeaderFromEnv]] = Field(default_factory=dict)
    tool_network: ToolNetwork = Field(default_factory=ToolNetwork)


class Outcome(enum.StrEnum):
    """How a run ended, as the runner saw it. The operator maps each to a phase and reason."""

    SUCCEEDED = "Succeeded"
    MAX_ITERATIONS = "MaxIterationsReached"
    TIMED_OUT = "TimedOut"
    TOKEN_BUDGET_EXCEEDED = "TokenBudgetExceeded"
    THROTTLE_QUEUE_TIMEOUT = "ThrottleQueueTimeout"
    # An answer no retry can fix: a 4xx (bad key, unknown model), or a 2xx that is not a chat completion.
    MODEL_REJECTED = "ModelRequestRejected"
    MODEL_FAILED = "ModelRequestFailed"  # retries exhausted on 429/5xx/timeouts
    CHECKPOINT_ERROR = "CheckpointError"
    CANCELLED = "Cancelled"


class ResultRef(ContractModel):
    summary: str = Field(max_length=2048)
    ref: str  # where the full result is stored: "configmap/<name>#result" or "pvc/<claim>/<path>"
    bytes: int = Field(ge=0)


class ApprovalRequest(ContractModel):
    """A tool call the runner stopped at: it needs a decision (spec.approvals) that it does not have."""

    key: str  # the call's idempotency key
    tool: str
    arguments: str = Field(max_length=2048)  # bounded, secret-like values redacted (agentrun_runner.approvals)
    requested_at: datetime


class ApprovalDecision(ContractModel):
    """A decision on one call, handed to the runner that resumes the run."""

    key: str
    approved: bool
    reason: str = Field(default="", max_length=1024)
    decided_by: str = ""  # empty: spec.approvals.onTimeout decided


class ProgressReport(ContractModel):
    """What the runner tells the operator. Each report replaces the previous one."""

    run_uid: str
    pod: str
    iteration: int = Field(ge=0)
    message: str = Field(default="", max_length=1024)
    usage: Usage = Field(default_factory=Usage)
    queue_wait: QueueWait = Field(default_factory=QueueWait)
    last_checkpoint: CheckpointInfo | None = None
    elapsed_seconds: float = Field(default=0, ge=0)
    resumed_from_iteration: int | None = None  # set by a runner that loaded a checkpoint at start
    started_at: datetime | None = None
    reported_at: datetime
    outcome: Outcome | None = None  # set once, after the result is persisted
    result: ResultRef | None = None
    # Set by a runner that checkpointed and stopped because these calls wait for a decision.
    approval_requests: list[ApprovalRequest] = Field(default_factory=list)
