"""Builders of every object the operator creates for a run. Pure: same input, same objects.

The operator and `agentrun render` both call ``build_children``, so what a user previews is what the
cluster gets. Each object gets a deterministic name (a second reconcile finds it instead of making
another), the recommended labels, and an owner reference to the AgentRun through ``kopf.adopt``
(deleting the run deletes them all).
"""

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import kopf

from agentrun_api import constants, contract
from agentrun_api.spec import AgentRunSpec
from agentrun_common.stream_timeouts.budget import StreamBudget, runner_server_timeouts
from agentrun_operator.budget import seconds_left
from agentrun_operator.run_route import RunRoute, build_run_route
from agentrun_operator.run_tools import NO_TOOLS, RunTools
from agentrun_operator.settings import OperatorSettings

# The longest run name whose children still have valid names: a Service name is a DNS label
# (63 characters), and "<run>-stream" adds 7.
MAX_RUN_NAME_LENGTH: Final = 63 - len("-stream")

RUNNER_CONTAINER: Final = "runner"
RUNNER_UID: Final = 65532  # a non-root user the runner image is built to run as
DEFAULT_PVC_SIZE: Final = "1Gi"
# The Job annotation that carries restarts made before this Job existed (a Job recreated after it
# was lost starts its own failure count at zero).
RESTARTS_BEFORE_ANNOTATION: Final = f"{constants.GROUP}/restarts-before"
TMP_PATH: Final = "/tmp"  # noqa: S108 - an emptyDir mounted there, not a shared host directory

ROLE_RUNNER: Final = "runner"
ROLE_IDENTITY: Final = "identity"
ROLE_CONFIG: Final = "config"
ROLE_PROGRESS: Final = "progress"
ROLE_CHECKPOINT: Final = "checkpoint"
ROLE_STREAM_TOKEN: Final = "stream-token"  # noqa: S105 - a role label, not a password
ROLE_PERMIT_KEY: Final = "permit-key"
ROLE_STREAM_READER: Final = "stream-reader"
ROLE_STREAM: Final = "stream"


def job_name(run: str) -> str:
    return f"{run}-runner"


def identity_name(run: str) -> str:
    """ServiceAccount, Role and RoleBinding share this name."""
    return f"{run}-runner"


def stream_reader_name(run: str) -> str:
    """The Role and RoleBinding that let the stream gateway read this run's stream token."""
    return f"{run}-stream-reader"


def stream_service_name(run: str) -> str:
    return f"{run}-stream"


def checkpoint_claim_name(run: str) -> str:
    return f"{run}-ckpt"


def labels(run: str, role: str) -> dict[str, str]:
    return {
        constants.LABEL_NAME: "agentrun",
        constants.LABEL_INSTANCE: run,
        constants.LABEL_COMPONENT: role,
        constants.LABEL_PART_OF: constants.PART_OF,
        constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
        constants.LABEL_RUN: run,
        constants.LABEL_ROLE: role,
    }


@dataclasses.dataclass(frozen=True)
class RunOwner:
    """The identity of an AgentRun, as its children refer to it."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "RunOwner":
        meta = body.get("metadata", {})
        return cls(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])

    def as_owner_body(self) -> dict[str, Any]:
        # Only what an owner reference needs: kopf.adopt also copies the owner's labels onto the
        # children, and an AgentRun synced by Argo CD carries its tracking label, which would make
        # Argo CD claim (and prune) the run's children.
        return {
            "apiVersion": constants.API_VERSION,
            "kind": constants.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid, "labels": {}},
        }


def _object(api_version: str, kind: str, name: str, run: str, role: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "labels": labels(run, role)},
        **fields,
    }


def runner_config(
    owner: RunOwner, spec: AgentRunSpec, settings: OperatorSettings, tools: RunTools = NO_TOOLS
) -> contract.RunnerConfig:
    return contract.RunnerConfig(
        run=contract.RunIdentity(namespace=owner.namespace, name=owner.name, uid=owner.uid),
        spec=spec,
        checkpoint=contract.CheckpointLocation(store=spec.checkpoint.store),
        progress_interval_seconds=settings.progress_interval_seconds,
        stream_keep_alive_seconds=runner_server_timeouts(StreamBudget.from_spec(spec)).keep_alive_seconds,
        # Throttled runs draw from their ThrottlePool when the operator serves pools.
        permit_server_url=(settings.permit_server_url or None) if spec.throttle.enabled else None,
        mcp_servers=list(tools.mcp_servers),
        http_tool_headers={name: list(headers) for name, headers in tools.http_tool_headers.items()},
        tool_network=contract.ToolNetwork(allow_loopback=settings.policy.allow_tool_loopback),
    )


def build_runner_config_map(
    owner: RunOwner, spec: AgentRunSpec, settings: OperatorSettings, tools: RunTools = NO_TOOLS
) -> dict[str, Any]:
    config = runner_config(owner, spec, settings, tools)
    return _object(
        "v1",
        "ConfigMap",
        contract.runner_config_name(owner.name),
        owner.name,
        ROLE_CONFIG,
        data={contract.CONFIG_FILE: config.model_dump_json(by_alias=True, exclude_none=True)},
    )


def build_progress_config_map(owner: RunOwner) -> dict[str, Any]:
    # Created empty by the operator so it carries the owner reference and labels; the runner only
    # updates it (its Role allows update and patch on this one name).
    return _object("v1", "ConfigMap", contract.progress_name(owner.name), owner.name, ROLE_PROGRESS, data={})


def build_stream_token_secret(owner: RunOwner, token: str) -> dict[str, Any]:
    return _object(
        "v1",
        "Secret",
        contract.stream_token_secret_name(owner.name),
        owner.name,
        ROLE_STREAM_TOKEN,
        type="Opaque",
        stringData={contract.STREAM_TOKEN_KEY: token},
    )


def build_permit_key_secret(owner: RunOwner, key: str) -> dict[str, Any]:
    """The runner's credential at the permit server; only the runner pod mounts it (no reader ever gets it)."""
    return _object(
        "v1",
        "Secret",
        contract.permit_key_secret_name(owner.name),
        owner.name,
        ROLE_PERMIT_KEY,
        type="Opaque",
        stringData={contract.PERMIT_KEY_KEY: key},
    )


def build_service_account(owner: RunOwner) -> dict[str, Any]:
    return _object(
        "v1", "ServiceAccount", identity_name(owner.name), owner.name, ROLE_IDENTITY, automountServiceAccountToken=True
    )


def runner_configmap_names(run: str, spec: AgentRunSpec) -> list[str]:
    """The ConfigMaps a runner may read and write: its progress report and its checkpoint segments."""
    names = [contract.progress_name(run)]
    if spec.checkpoint.store == "ConfigMap":
        names += [contract.checkpoint_segment_name(run, n) for n in range(contract.CONFIGMAP_MAX_SEGMENTS)]
    return names


def build_role(owner: RunOwner, spec: AgentRunSpec) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": runner_configmap_names(owner.name, spec),
            "verbs": ["get", "update", "patch"],
        }
    ]
    archives_events = spec.checkpoint.store == "PersistentVolumeClaim" and spec.streaming.enabled
    if archives_events:
        # At the end it writes its event log into <run>-events-<n> (patch, or create when missing),
        # for replay once its pod and claim are gone (agentrun_common.eventlog.archive); it never reads them.
        names = [contract.events_archive_name(owner.name, n) for n in range(contract.EVENTS_ARCHIVE_MAX_SEGMENTS)]
        rules.append({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": names, "verbs": ["patch"]})
    if spec.checkpoint.store == "ConfigMap" or archives_events:
        # The runner creates its checkpoint segments (or archive segments) as it needs them. Kubernetes
        # RBAC cannot limit "create" by resourceNames (the name is not known at authorization time),
        # so this rule allows creating any ConfigMap in the namespace; it grants no read, update or
        # delete of anything but the names listed above, and nothing at all on Secrets or other kinds.
        rules.append({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]})
    return _object(
        "rbac.authorization.k8s.io/v1", "Role", identity_name(owner.name), owner.name, ROLE_IDENTITY, rules=rules
    )


def build_role_binding(owner: RunOwner) -> dict[str, Any]:
    name = identity_name(owner.name)
    return _object(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        name,
        owner.name,
        ROLE_IDENTITY,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        subjects=[{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    )


def build_stream_reader_role(run: str) -> dict[str, Any]:
    """`get` on this run's stream-token Secret, by name: the gateway needs the token to check readers and to
    attach to the runner's stream, and RBAC by resourceNames keeps every other Secret out of its reach."""
    rule = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": [contract.stream_token_secret_name(run)],
        "verbs": ["get"],
    }
    return _object(
        "rbac.authorization.k8s.io/v1", "Role", stream_reader_name(run), run, ROLE_STREAM_READER, rules=[rule]
    )


def build_stream_reader_binding(run: str, gateway_service_account: str) -> dict[str, Any]:
    """Binds ``build_stream_reader_role`` to the gateway's ServiceAccount ("<namespace>/<name>")."""
    namespace, _, account = gateway_service_account.partition("/")
    name = stream_reader_name(run)
    return _object(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        name,
        run,
        ROLE_STREAM_READER,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        subjects=[{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    )


def build_checkpoint_claim(owner: RunOwner, spec: AgentRunSpec) -> dict[str, Any]:
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.checkpoint.size or DEFAULT_PVC_SIZE}},
    }
    if spec.checkpoint.storage_class_name:
        claim_spec["storageClassName"] = spec.checkpoint.storage_class_name
    return _object(
        "v1", "PersistentVolumeClaim", checkpoint_claim_name(owner.name), owner.name, ROLE_CHECKPOINT, spec=claim_spec
    )


def build_stream_service(owner: RunOwner, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The run's stream Service; ``annotations`` are what the run's own route's controller needs on it."""
    service = _object(
        "v1",
        "Service",
        stream_service_name(owner.name),
        owner.name,
        ROLE_STREAM,
        spec={
            "type": "ClusterIP",
            "selector": {constants.LABEL_RUN: owner.name, constants.LABEL_ROLE: ROLE_RUNNER},
            "ports": [
                {
                    "name": contract.STREAM_PORT_NAME,
                    "port": contract.STREAM_PORT,
                    "targetPort": contract.STREAM_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    )
    if annotations:
        service["metadata"]["annotations"] = dict(annotations)
    return service


def run_route(owner: RunOwner, spec: AgentRunSpec) -> RunRoute | None:
    """The run's own stream route (spec.streaming.ingress), leading to its stream Service."""
    return build_run_route(owner.namespace, stream_service_name(owner.name), labels(owner.name, ROLE_STREAM), spec)


def _runner_env(owner: RunOwner, spec: AgentRunSpec, deadline: datetime, tools: RunTools) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": contract.CONFIG_ENV, "value": f"{contract.CONFIG_MOUNT_PATH}/{contract.CONFIG_FILE}"},
        {"name": contract.DEADLINE_ENV, "value": deadline.astimezone(UTC).isoformat()},
        {"name": contract.POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": contract.POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": contract.STREAM_TOKEN_ENV,
            "valueFrom": {
                "secretKeyRef": {
                    "name": contract.stream_token_secret_name(owner.name),
                    "key": contract.STREAM_TOKEN_KEY,
                }
            },
        },
        {
            "name": contract.PERMIT_KEY_ENV,
            "valueFrom": {
                "secretKeyRef": {"name": contract.permit_key_secret_name(owner.name), "key": contract.PERMIT_KEY_KEY}
            },
        },
        {"name": "HOME", "value": TMP_PATH},  # the root filesystem is read-only
    ]
    key_ref = spec.model.api_key_secret_ref
    if key_ref is not None:
        # Only the reference travels: the kubelet resolves the key into the container's env.
        env.append(
            {"name": contract.API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": key_ref.name, "key": key_ref.key}}}
        )
    env.extend(tools.env())  # the credentials of the tools this run uses, and of no others
    return env


def _restricted_container_security() -> dict[str, Any]:
    """The Pod Security Standards "restricted" profile, and a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_job(
    owner: RunOwner,
    spec: AgentRunSpec,
    settings: OperatorSettings,
    *,
    deadline: datetime,
    now: datetime,
    restarts_before: int = 0,
    tools: RunTools = NO_TOOLS,
) -> dict[str, Any]:
    """The runner Job; a Job created after the first (a lost one replaced) gets only the budget left."""
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": contract.CONFIG_MOUNT_PATH, "readOnly": True},
        {"name": "workspace", "mountPath": contract.WORKSPACE_PATH},
        {"name": "tmp", "mountPath": TMP_PATH},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": contract.runner_config_name(owner.name)}},
        {"name": "workspace", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.checkpoint.store == "PersistentVolumeClaim":
        mounts.append({"name": "checkpoint", "mountPath": contract.CHECKPOINT_MOUNT_PATH})
        volumes.append(
            {"name": "checkpoint", "persistentVolumeClaim": {"claimName": checkpoint_claim_name(owner.name)}}
        )
    container: dict[str, Any] = {
        "name": RUNNER_CONTAINER,
        "image": spec.runner.image or settings.runner_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "agentrun_runner"],
        "env": _runner_env(owner, spec, deadline, tools),
        "volumeMounts": mounts,
        "securityContext": _restricted_container_security(),
    }
    if spec.streaming.enabled:
        container["ports"] = [
            {"name": contract.STREAM_PORT_NAME, "containerPort": contract.STREAM_PORT, "protocol": "TCP"}
        ]
        # Ready once the stream is served: until then the stream Service has no ready endpoint, so a reader is
        # refused or kept waiting by the gateway instead of being led to a port nothing listens on yet.
        container["readinessProbe"] = {"tcpSocket": {"port": contract.STREAM_PORT_NAME}, "periodSeconds": 1}
    wanted = spec.runner.resources
    if not wanted.requests and not wanted.limits:
        wanted = settings.policy.default_runner_resources  # the platform's default for runs that set none
    resources = {k: dict(v) for k, v in (("requests", wanted.requests), ("limits", wanted.limits)) if v}
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        # The pod failure policy below requires Never: a failed container fails its pod, and the
        # Job controller, not the kubelet, decides about the replacement.
        "restartPolicy": "Never",
        "serviceAccountName": identity_name(owner.name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    pull_secrets = dict.fromkeys(
        [*settings.runner_image_pull_secrets, *(s.name for s in spec.runner.image_pull_secrets)]
    )
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    if spec.runner.node_selector:
        pod_spec["nodeSelector"] = dict(spec.runner.node_selector)
    if spec.runner.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.runner.tolerations]
    job = _object(
        "batch/v1",
        "Job",
        job_name(owner.name),
        owner.name,
        ROLE_RUNNER,
        spec={
            "backoffLimit": spec.retries.max_restarts,
            "activeDeadlineSeconds": seconds_left(deadline, now),
            "suspend": spec.suspend,
            "completions": 1,
            "parallelism": 1,
            "podFailurePolicy": {
                "rules": [
                    {
                        # An invalid config fails the same way on every attempt: stop at once.
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": RUNNER_CONTAINER,
                            "operator": "In",
                            "values": [contract.EXIT_INVALID_CONFIG],
                        },
                    },
                    {
                        # Evictions, preemption and node drains are not the runner's fault: they
                        # must not use up the run's restarts.
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {"metadata": {"labels": labels(owner.name, ROLE_RUNNER)}, "spec": pod_spec},
        },
    )
    job["metadata"]["annotations"] = {RESTARTS_BEFORE_ANNOTATION: str(restarts_before)}
    return job


def build_companions(
    owner: RunOwner,
    spec: AgentRunSpec,
    settings: OperatorSettings,
    *,
    stream_token: str,
    permit_key: str,
    tools: RunTools = NO_TOOLS,
) -> list[dict[str, Any]]:
    """The run's objects besides its Job, checkpoint claim and own stream route, in creation order. The
    supervisor creates these again when they are deleted; the Job is replaced by the supervisor's own rules
    (counting a restart), a new empty claim is not the lost checkpoint, and a route's kind may not be served."""
    objects = [build_service_account(owner), build_role(owner, spec), build_role_binding(owner)]
    if spec.streaming.enabled and settings.gateway_service_account:
        # Before the token Secret: whoever can read the token finds the gateway already allowed to check it.
        objects.append(build_stream_reader_role(owner.name))
        objects.append(build_stream_reader_binding(owner.name, settings.gateway_service_account))
    objects += [
        build_runner_config_map(owner, spec, settings, tools),
        build_progress_config_map(owner),
        build_stream_token_secret(owner, stream_token),
        build_permit_key_secret(owner, permit_key),
    ]
    if spec.streaming.enabled:
        route = run_route(owner, spec)
        objects.append(build_stream_service(owner, route.service_annotations if route else None))
    kopf.adopt(objects, owner=owner.as_owner_body())  # type: ignore[arg-type]
    return objects


def build_children(
    owner: RunOwner,
    spec: AgentRunSpec,
    settings: OperatorSettings,
    *,
    stream_token: str,
    permit_key: str,
    deadline: datetime,
    now: datetime,
    tools: RunTools = NO_TOOLS,
) -> list[dict[str, Any]]:
    """Every object of a run, in creation order: what the Job needs exists before the Job."""
    companions = build_companions(owner, spec, settings, stream_token=stream_token, permit_key=permit_key, tools=tools)
    rest: list[dict[str, Any]] = []
    if spec.checkpoint.store == "PersistentVolumeClaim":
        rest.append(build_checkpoint_claim(owner, spec))
    rest.append(build_job(owner, spec, settings, deadline=deadline, now=now, tools=tools))
    route = run_route(owner, spec)
    if route is not None:
        rest.extend(route.objects)
    kopf.adopt(rest, owner=owner.as_owner_body())  # type: ignore[arg-type]  # the companions are adopted already
    return companions + rest


def adopted(obj: dict[str, Any], owner: RunOwner) -> dict[str, Any]:
    """One object, owned by the run (for objects built after the first reconcile, like a new Job)."""
    kopf.adopt(obj, owner=owner.as_owner_body())  # type: ignore[arg-type]
    return obj
