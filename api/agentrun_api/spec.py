"""The AgentRun spec: what a user declares. The CRD's spec schema is generated from these models.

Every field carries a description (it is what `kubectl explain` prints), its bounds, and, where a rule
spans fields, a CEL rule in ``x-kubernetes-validations`` that the API server checks at admission. The
same rules are checked again by pydantic when the operator parses a spec, because a spec can reach
the operator past admission (an older CRD installed, for example).
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from agentrun_api.names import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from agentrun_common.durations import DURATION_FORMS, DURATION_PATTERN, parse_duration

TAKES_DURATION = f"Takes {DURATION_FORMS}."

# Seven days: past this a run should be split into several, and whole-response timers on the
# stream path (which cap at 24 h on most platforms) are survived by resuming, not by waiting.
MAX_EXECUTION_TIME_SECONDS = 7 * 24 * 3600
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Fields a user may change after creation; every other spec field is immutable (a run is what it
# was created as: change the definition by creating a new AgentRun).
MUTABLE_SPEC_FIELDS = frozenset({"suspend", "cancel"})


def _cel_string(text: str) -> str:
    """``text`` as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class DurationBounds:
    """Annotated metadata of a duration field: its pattern and bounds, by CEL at admission and by pydantic here."""

    minimum: str
    maximum: str | None = None

    def _check(self, value: str) -> str:
        seconds = parse_duration(value)
        if seconds < parse_duration(self.minimum):
            raise ValueError(f"{value!r} is shorter than the minimum of {self.minimum}")
        if self.maximum is not None and seconds > parse_duration(self.maximum):
            raise ValueError(f"{value!r} is longer than the maximum of {self.maximum}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(pattern=DURATION_PATTERN, maxLength=32)
        # The API server runs these rules even when the pattern already failed; unguarded, duration()
        # would then fail to convert the value (or take "-5m" as negative) and each bound would add an
        # error that says nothing the pattern's error does not.
        guard = f"!self.matches({_cel_string(DURATION_PATTERN)}) || "
        rules = [
            {
                "rule": f"{guard}duration(self) >= duration('{self.minimum}')",
                "message": f"must be at least {self.minimum}",
            }
        ]
        if self.maximum is not None:
            rules.append(
                {
                    "rule": f"{guard}duration(self) <= duration('{self.maximum}')",
                    "message": f"must be at most {self.maximum}",
                }
            )
        json_schema["x-kubernetes-validations"] = rules
        return json_schema


class SpecModel(BaseModel):
    """Frozen, camelCase on the wire, unknown fields rejected (as the API server does with strict validation)."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class SecretKeyRef(SpecModel):
    """A key in a Secret in the run's namespace. Only the reference is stored; the value never leaves the Secret."""

    name: str = Field(
        description="Name of the Secret, in the AgentRun's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    key: str = Field(
        description="Key within the Secret's data.", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN
    )


class ModelSpec(SpecModel):
    """The model endpoint every reasoning step calls: any OpenAI-compatible chat completions API."""

    name: str = Field(
        description="Model name sent to the endpoint, for example gpt-4.1-mini.", min_length=1, max_length=256
    )
    base_url: str = Field(
        default="https://api.openai.com/v1",
        alias="baseURL",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of an OpenAI-compatible API (OpenAI, Azure, vLLM, Ollama, LiteLLM).",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key. Omit for endpoints that need none (a local vLLM or Ollama). "
        "The run waits Pending (condition Accepted=False, reason SecretNotFound) while the Secret or key is missing, "
        "and ends Failed after the operator's grace (default 5 minutes after creation, at most maxExecutionTime).",
    )
    request_timeout: Annotated[str, DurationBounds("1s", "1h")] = Field(
        default="120s", description=f"Timeout of one model call, including a streamed answer. {TAKES_DURATION}"
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of one model call on 429, 5xx and connection errors."
    )
    stream: bool = Field(default=False, description="Stream tokens from the model and relay them on the run's stream.")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; omit for the model's default."
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Upper bound on tokens in one model answer."
    )


class ThrottleSpec(SpecModel):
    """A queue in front of every model call. Runs that name the same pool share its limits."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.maxConcurrentRequests)",
                    "message": "throttle.maxConcurrentRequests was removed: a run makes one model call at a time, "
                    "so it never limited anything; delete it, and limit calls in flight across runs with "
                    "maxRequestsInFlight of a ThrottlePool or ClusterThrottlePool",
                },
                {
                    "rule": "!has(self.clusterPool) || self.pool == 'default'",
                    "message": "set either pool (a ThrottlePool of this namespace) or clusterPool (a "
                    "ClusterThrottlePool), not both",
                },
            ]
        }
    )

    enabled: bool = Field(default=False, description="Put every model call of this run behind the throttle queue.")
    pool: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the throttle pool; runs naming the same pool share one provider budget.",
    )
    cluster_pool: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of a ClusterThrottlePool to draw permits from instead of pool: one budget for runs of "
        "many namespaces. The run's namespace must be allowed to use it (RBAC verb 'use' on clusterthrottlepools).",
    )
    # Kept only so runs stored before its removal still parse; admission refuses it (the rule above).
    max_concurrent_requests: int | None = Field(
        default=None,
        description="Removed (a run makes one model call at a time): refused at admission. Limit calls in flight "
        "across runs with a pool's maxRequestsInFlight.",
    )
    requests_per_minute: int = Field(
        default=60, ge=1, le=1_000_000, description="Model calls started per minute for this run's queue."
    )
    max_seconds_to_wait_in_queue: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="Longest wait for a permit, in seconds; past it the run fails with reason ThrottleQueueTimeout.",
    )

    @model_validator(mode="after")
    def _one_pool(self) -> "ThrottleSpec":
        if self.cluster_pool is not None and self.pool != "default":
            raise ValueError("set either throttle.pool or throttle.clusterPool, not both")
        return self


class CheckpointSpec(SpecModel):
    """Where the run's state is written after every step, so a restarted pod resumes instead of restarting."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.store == 'PersistentVolumeClaim' || (!has(self.storageClassName) && !has(self.size))",
                    "message": "storageClassName and size apply only when store is PersistentVolumeClaim",
                }
            ]
        }
    )

    store: Literal["ConfigMap", "PersistentVolumeClaim"] = Field(
        default="ConfigMap",
        description="ConfigMap keeps state in API objects (append-only segments, up to 32 MiB in all); "
        "PersistentVolumeClaim keeps it in append-only files on a volume, for larger runs.",
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="StorageClass of the PVC; omit for the cluster's default.",
    )
    size: str | None = Field(
        default=None,
        max_length=32,
        pattern=QUANTITY_PATTERN,
        description='Requested PVC size as a quantity, for example "1Gi" (default 1Gi).',
    )

    @model_validator(mode="after")
    def _pvc_fields_need_pvc(self) -> "CheckpointSpec":
        if self.store != "PersistentVolumeClaim" and (self.storage_class_name or self.size):
            raise ValueError("storageClassName and size apply only when store is PersistentVolumeClaim")
        return self


IngressController = Literal[
    "ingress-nginx",
    "nginx-inc",
    "aws-alb",
    "aws-nlb",
    "gke-ingress",
    "gke-gateway",
    "traefik",
    "haproxy-tech",
    "haproxy-ingress",
    "contour",
    "istio",
    "gateway-api",
    "azure-agic",
]


class StreamIngressSpec(SpecModel):
    """Opt-in per-run exposure of the stream. Off by default: one stable route to the stream gateway
    serves every run, because a new Ingress per run reloads ingress-nginx and drops open streams."""

    controller: IngressController = Field(
        default="ingress-nginx", description="Ingress or gateway controller whose timeout settings are generated."
    )
    class_name: str | None = Field(default=None, max_length=253, description="IngressClass or Gateway name.")
    host: str = Field(
        min_length=1, max_length=253, pattern=HOSTNAME_PATTERN, description="Host the stream is served on."
    )


class StreamingSpec(SpecModel):
    """The run's Server-Sent Events stream: every event with a monotonic id, replayable after reconnects."""

    enabled: bool = Field(default=True, description="Serve the run's events as Server-Sent Events.")
    heartbeat_interval: Annotated[str, DurationBounds("1s", "5m")] = Field(
        default="15s",
        description="Interval of heartbeat comments on an idle stream; keep it well inside the "
        f"shortest idle timeout on the path. {TAKES_DURATION}",
    )
    ingress: StreamIngressSpec | None = Field(
        default=None, description="Per-run exposure; omit to use the shared stream gateway route."
    )


class RetriesSpec(SpecModel):
    """How often a failed runner pod is replaced; each replacement resumes from the last checkpoint."""

    max_restarts: int = Field(default=3, ge=0, le=100, description="Runner pod restarts before the run fails.")


class Toleration(SpecModel):
    """A toleration for the runner pod, as in the Pod API."""

    key: str | None = Field(default=None, max_length=317, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; omit for all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound."
    )


class ResourceRequirements(SpecModel):
    """CPU and memory for the runner container, as quantities."""

    requests: dict[str, Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]] = Field(
        default_factory=dict, max_length=8, description='Requests, for example {"cpu": "100m", "memory": "256Mi"}.'
    )
    limits: dict[str, Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]] = Field(
        default_factory=dict, max_length=8, description='Limits, for example {"memory": "512Mi"}.'
    )


class ImagePullSecret(SpecModel):
    """A Secret of type kubernetes.io/dockerconfigjson in the run's namespace, as in the Pod API."""

    name: str = Field(
        description="Name of the Secret, in the AgentRun's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )


class RunnerSpec(SpecModel):
    """Scheduling and sizing of the runner pod."""

    image: str | None = Field(
        default=None, max_length=512, description="Runner image; omit for the operator's default."
    )
    image_pull_secrets: list[ImagePullSecret] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets for pulling the runner image from a private registry, in the run's namespace; added "
        "to the operator's default ones (the chart's runnerImage.pullSecrets).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Runner container resources."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Node labels the runner pod must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the runner pod."
    )


HTTP_HEADER_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]+$"


class HeaderFromSecret(SpecModel):
    """An HTTP header whose value is a key of a Secret; only the reference is stored."""

    name: str = Field(
        max_length=256, pattern=HTTP_HEADER_PATTERN, description="Header name, for example Authorization."
    )
    secret_key_ref: SecretKeyRef = Field(description="The Secret key holding the header's whole value.")


class MCPToolsRef(SpecModel):
    """Tools of one MCPServer in the run's namespace that the model may call."""

    server: str = Field(
        min_length=1,
        max_length=40,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the MCPServer. The model sees its tools as <server>__<tool>.",
    )
    tools: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1,
        max_length=128,
        description="Names of the server's tools (as its status.tools lists them) the run may call; no others are offered.",
    )


class HttpToolSpec(SpecModel):
    """A declared HTTP endpoint offered to the model as a tool."""

    name: str = Field(
        min_length=1, max_length=64, pattern=TOOL_NAME_PATTERN, description="The tool's name, as the model calls it."
    )
    description: str = Field(min_length=1, max_length=4096, description="What the tool does, for the model.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(default="POST", description="HTTP method.")
    url_template: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="URL with {argument} placeholders, filled with the call's arguments (URL-encoded); arguments "
        "not in the template go in the JSON body (or the query for GET and DELETE). Its host must be allowed by the "
        "operator's policy (AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS).",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON Schema of the arguments (an object), as the model is shown it; empty: no arguments.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    headers: list[HeaderFromSecret] = Field(
        default_factory=list, max_length=16, description="HTTP headers sent with every call, each value from a Secret."
    )
    max_response_bytes: int = Field(
        default=65_536, ge=1, le=16_777_216, description="Bytes of a response the model sees; the rest is cut."
    )

    @model_validator(mode="after")
    def _placeholders_only_after_the_host(self) -> "HttpToolSpec":
        # An argument in the scheme, host or port would let the model choose where the call goes.
        origin = self.url_template.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        if "{" in origin or "}" in origin:
            raise ValueError(
                f"tools.http[{self.name}].urlTemplate: placeholders may appear only in the path and query, "
                f"not in the host {origin!r}"
            )
        return self


class HttpFetchSpec(SpecModel):
    """The http_fetch tool: GET requests to listed hosts only."""

    allowed_hosts: list[Annotated[str, Field(pattern=HOSTNAME_PATTERN, max_length=253)]] = Field(
        min_length=1,
        max_length=64,
        description='Hosts the tool may fetch from; "*.example.com" allows subdomains. Nothing else is reachable.',
    )
    max_response_bytes: int = Field(
        default=1_048_576, ge=1, le=16_777_216, description="Bytes of a response the model sees."
    )


class ToolsSpec(SpecModel):
    """The tools offered to the model: built-in ones, MCP servers' tools and declared HTTP endpoints."""

    workspace: bool = Field(default=True, description="Offer read, write and list of files in the run's own workspace.")
    http_fetch: HttpFetchSpec | None = Field(
        default=None, description="Offer an HTTP GET tool limited to allowed hosts."
    )
    mcp: list[MCPToolsRef] = Field(
        default_factory=list, max_length=16, description="Tools of MCPServers in the run's namespace to offer."
    )
    http: list[HttpToolSpec] = Field(
        default_factory=list, max_length=64, description="Declared HTTP endpoints to offer as tools."
    )
    call_timeout: Annotated[str, DurationBounds("1s", "1h")] = Field(
        default="60s", description=f"Timeout of one tool call. {TAKES_DURATION}"
    )


TOOL_NAME_PATTERN = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*$"


class ApprovalsSpec(SpecModel):
    """Tools whose calls wait for a person's decision. The run checkpoints and its pod exits while it waits
    (it holds no pod, and maxExecutionTime's clock stops); `kubectl agentrun approve|deny` decides."""

    tools: list[Annotated[str, Field(pattern=TOOL_NAME_PATTERN, max_length=128)]] = Field(
        min_length=1,
        max_length=64,
        description="Names of the tools whose every call needs approval, as the model calls them: a built-in "
        "tool (write_file, http_fetch, ...) or a tool of a declared MCP server or HTTP tool.",
    )
    timeout: Annotated[str, DurationBounds("1s", "168h")] = Field(
        default="24h",
        description="How long a request waits for a decision before onTimeout applies. The wait does not count "
        f"against maxExecutionTime. {TAKES_DURATION}",
    )
    on_timeout: Literal["Deny", "Fail"] = Field(
        default="Deny",
        description="What happens when no decision comes within timeout: Deny tells the model the call was "
        "denied and the run goes on; Fail ends the run Failed with reason ApprovalTimedOut.",
    )


class CompletionWebhookSpec(SpecModel):
    """A POST sent once the run has ended, and when it starts waiting for an approval; signed with HMAC-SHA256."""

    url: str = Field(max_length=2048, pattern=r"^https?://[^\s]+$", description="URL that receives the signed payload.")
    signing_key_secret_ref: SecretKeyRef = Field(description="Secret key with the HMAC-SHA256 signing key.")
    max_attempts: int = Field(default=5, ge=1, le=20, description="Delivery attempts, with exponential backoff.")


class AgentRunSpec(SpecModel):
    """What the run does and the budget it must finish within."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.tokenBudget) || !has(self.model.maxOutputTokens) || self.model.maxOutputTokens <= self.tokenBudget",
                    "message": "model.maxOutputTokens must not exceed tokenBudget",
                }
            ]
        }
    )

    instructions: str = Field(
        min_length=1, max_length=65_536, description="System prompt: who the agent is and how it works."
    )
    input: str = Field(min_length=1, max_length=262_144, description="The task the agent is given.")
    model: ModelSpec = Field(description="The model endpoint and how each call to it is bounded.")
    max_execution_time: Annotated[str, DurationBounds("1s", "168h")] = Field(
        description="Wall-clock budget of the whole run, from its acceptance (status.budget.clockStartTime): "
        "time pending, suspended and lost to restarts all count; the run ends TimedOut at "
        f"status.budget.deadline. {TAKES_DURATION}"
    )
    max_iterations: int = Field(ge=1, le=100_000, description="Reasoning loops (model calls) the run may make.")
    token_budget: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Total tokens (prompt plus completion) the run may use; it ends Failed with reason TokenBudgetExceeded past it.",
    )
    throttle: ThrottleSpec = Field(default_factory=ThrottleSpec, description="The model-call queue and its limits.")
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Where state is checkpointed after every step."
    )
    streaming: StreamingSpec = Field(default_factory=StreamingSpec, description="The run's event stream.")
    tools: ToolsSpec = Field(default_factory=ToolsSpec, description="Built-in tools the model may call.")
    approvals: ApprovalsSpec | None = Field(
        default=None, description="Tools whose calls wait for a person's approval; omit for none."
    )
    retries: RetriesSpec = Field(
        default_factory=RetriesSpec, description="Pod restarts, each resuming from the last checkpoint."
    )
    progress_deadline: Annotated[str, DurationBounds("30s", "24h")] = Field(
        default="10m",
        description="Longest time without a progress report before the operator replaces the runner "
        f"pod, or fails the run when no restarts remain. {TAKES_DURATION}",
    )
    runner: RunnerSpec = Field(default_factory=RunnerSpec, description="Runner pod image, resources and scheduling.")
    completion_webhook: CompletionWebhookSpec | None = Field(
        default=None,
        description="Notify a URL once the run has ended, and each time it starts waiting for an approval.",
    )
    suspend: bool = Field(
        default=False,
        description="Pause the run: the runner checkpoints and stops; false resumes it from the checkpoint.",
    )
    cancel: bool = Field(
        default=False,
        description="Stop the run for good; its phase becomes Cancelled. Cannot be undone.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self || !oldSelf", "message": "cancel cannot be undone once set"}]
        },
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Seconds after the run ends before its Job and pods are deleted. The AgentRun and its result stay.",
    )

    @model_validator(mode="after")
    def _output_within_token_budget(self) -> "AgentRunSpec":
        limit = self.model.max_output_tokens
        if self.token_budget is not None and limit is not None and limit > self.token_budget:
            raise ValueError("model.maxOutputTokens must not exceed tokenBudget")
        return self
