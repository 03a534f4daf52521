"""The objects the operator builds for a run: valid Kubernetes, least privilege, restricted pods."""

from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest

from agentrun_api import constants, contract
from agentrun_api.spec import AgentRunSpec
from agentrun_common.stream_timeouts.budget import (
    GATEWAY_UPSTREAM_POOL_IDLE_SECONDS,
    StreamBudget,
    runner_server_timeouts,
)
from agentrun_operator.children import (
    RESTARTS_BEFORE_ANNOTATION,
    RunOwner,
    build_children,
    build_job,
    runner_config,
)
from agentrun_operator.settings import OperatorSettings
from tests.operator_samples import manifest

pytestmark = pytest.mark.unit

# The oldest and newest Kubernetes versions whose schemas kubernetes-validate ships that we target.
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0", "1.37.0"]
OWNER = RunOwner(namespace="team-a", name="q3", uid="uid-q3")
SETTINGS = OperatorSettings(runner_image="registry.example/runner:1")
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DEADLINE = NOW + timedelta(minutes=30)  # a run accepted just now with maxExecutionTime 30m

SPEC_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "pvc-store": {"checkpoint": {"store": "PersistentVolumeClaim", "storageClassName": "fast", "size": "5Gi"}},
    "no-stream-no-key": {
        "streaming": {"enabled": False},
        "model": {"name": "local", "baseURL": "http://vllm:8000/v1"},
    },
    "scheduling": {
        "runner": {
            "image": "registry.example/custom:2",
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "nodeSelector": {"pool": "agents"},
            "tolerations": [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "suspend": True,
        "retries": {"maxRestarts": 7},
    },
}


def spec_of(**overrides: Any) -> AgentRunSpec:
    return AgentRunSpec.model_validate(manifest(**overrides)["spec"])


def children_of(variant: str) -> dict[str, dict[str, Any]]:
    objects = build_children(
        OWNER,
        spec_of(**SPEC_VARIANTS[variant]),
        SETTINGS,
        stream_token="tok",
        permit_key="key",
        deadline=DEADLINE,
        now=NOW,
    )
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(SPEC_VARIANTS))
def test_every_child_is_valid_against_the_published_kubernetes_schema(variant: str, version: str) -> None:
    for obj in children_of(variant).values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_children_have_deterministic_names_and_the_documented_set() -> None:
    assert sorted(children_of("defaults")) == [
        "ConfigMap/q3-progress",
        "ConfigMap/q3-runner-config",
        "Job/q3-runner",
        "Role/q3-runner",
        "RoleBinding/q3-runner",
        "Secret/q3-permit-key",
        "Secret/q3-stream-token",
        "Service/q3-stream",
        "ServiceAccount/q3-runner",
    ]
    assert "PersistentVolumeClaim/q3-ckpt" in children_of("pvc-store")
    assert "Service/q3-stream" not in children_of("no-stream-no-key")


def test_every_child_is_owned_by_the_run_and_labelled() -> None:
    for obj in children_of("pvc-store").values():
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": constants.API_VERSION,
                "kind": constants.KIND,
                "name": "q3",
                "uid": "uid-q3",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels[constants.LABEL_RUN] == "q3"
        assert labels[constants.LABEL_INSTANCE] == "q3"
        assert labels[constants.LABEL_MANAGED_BY] == constants.MANAGED_BY
        assert labels[constants.LABEL_ROLE] == labels[constants.LABEL_COMPONENT]


def test_role_grants_only_the_runs_own_configmaps_and_no_secrets() -> None:
    role = children_of("defaults")["Role/q3-runner"]
    named, create = role["rules"]
    assert named["resources"] == ["configmaps"]
    assert sorted(named["verbs"]) == ["get", "patch", "update"]
    expected = {"q3-progress"} | {f"q3-ckpt-{n}" for n in range(contract.CONFIGMAP_MAX_SEGMENTS)}
    assert set(named["resourceNames"]) == expected
    assert create == {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}
    every_resource = {r for rule in role["rules"] for r in rule["resources"]}
    assert every_resource == {"configmaps"}


def test_pvc_store_role_may_write_the_event_archive_and_nothing_else() -> None:
    role = children_of("pvc-store")["Role/q3-runner"]
    named, archive, create = role["rules"]
    assert named == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["q3-progress"],
        "verbs": ["get", "update", "patch"],
    }
    # Written once at the end, never read back: patch (and create) on its own archive names only.
    assert archive == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [f"q3-events-{n}" for n in range(contract.EVENTS_ARCHIVE_MAX_SEGMENTS)],
        "verbs": ["patch"],
    }
    assert create == {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}


def test_pvc_store_without_a_stream_needs_no_archive_and_no_create() -> None:
    spec = spec_of(checkpoint={"store": "PersistentVolumeClaim"}, streaming={"enabled": False})
    role = next(
        o
        for o in build_children(OWNER, spec, SETTINGS, stream_token="tok", permit_key="key", deadline=DEADLINE, now=NOW)
        if o["kind"] == "Role"
    )
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["q3-progress"],
            "verbs": ["get", "update", "patch"],
        }
    ]


def test_a_job_created_later_gets_only_the_budget_left_and_the_absolute_deadline() -> None:
    # A lost Job recreated 25m10.6s into a 30m budget: its hard stop must not fall after the deadline.
    later = NOW + timedelta(minutes=25, seconds=10, milliseconds=600)
    job = build_job(OWNER, spec_of(), SETTINGS, deadline=DEADLINE, now=later, restarts_before=1)
    assert job["spec"]["activeDeadlineSeconds"] == 4 * 60 + 49  # rounded down, never past the deadline
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.DEADLINE_ENV] == "2026-01-01T12:30:00+00:00"
    past = build_job(OWNER, spec_of(), SETTINGS, deadline=DEADLINE, now=DEADLINE + timedelta(seconds=5))
    assert past["spec"]["activeDeadlineSeconds"] == 1  # the API's minimum: the operator ends the run anyway


def test_role_binding_binds_the_runs_service_account_only() -> None:
    binding = children_of("defaults")["RoleBinding/q3-runner"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "q3-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "q3-runner", "namespace": "team-a"}]


def test_job_bounds_the_run_and_tells_crashes_from_bad_config_and_evictions() -> None:
    job = children_of("scheduling")["Job/q3-runner"]
    spec = job["spec"]
    assert spec["activeDeadlineSeconds"] == 30 * 60
    assert spec["backoffLimit"] == 7
    assert spec["suspend"] is True
    fail_rule, ignore_rule = spec["podFailurePolicy"]["rules"]
    assert fail_rule["action"] == "FailJob"
    assert fail_rule["onExitCodes"] == {
        "containerName": "runner",
        "operator": "In",
        "values": [contract.EXIT_INVALID_CONFIG],
    }
    assert ignore_rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "q3-runner"
    assert pod["nodeSelector"] == {"pool": "agents"}
    assert pod["tolerations"] == [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/custom:2"
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert job["metadata"]["annotations"][RESTARTS_BEFORE_ANNOTATION] == "0"


def test_runner_pod_runs_with_the_restricted_security_profile() -> None:
    pod = children_of("defaults")["Job/q3-runner"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = pod["containers"][0]["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_runner_gets_config_volumes_and_secrets_only_by_reference() -> None:
    pod = children_of("pvc-store")["Job/q3-runner"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env[contract.CONFIG_ENV]["value"] == f"{contract.CONFIG_MOUNT_PATH}/{contract.CONFIG_FILE}"
    assert env[contract.API_KEY_ENV] == {
        "name": contract.API_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}},
    }
    assert env[contract.STREAM_TOKEN_ENV]["valueFrom"] == {
        "secretKeyRef": {"name": "q3-stream-token", "key": contract.STREAM_TOKEN_KEY}
    }
    assert env[contract.POD_NAME_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert all(
        "value" not in e for e in container["env"] if e["name"] in (contract.API_KEY_ENV, contract.STREAM_TOKEN_ENV)
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {
        contract.CONFIG_MOUNT_PATH: "config",
        contract.WORKSPACE_PATH: "workspace",
        "/tmp": "tmp",
        contract.CHECKPOINT_MOUNT_PATH: "checkpoint",
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": "q3-runner-config"}
    assert volumes["checkpoint"]["persistentVolumeClaim"] == {"claimName": "q3-ckpt"}
    assert volumes["workspace"] == {"name": "workspace", "emptyDir": {}}


def test_no_api_key_ref_means_no_api_key_env() -> None:
    container = children_of("no-stream-no-key")["Job/q3-runner"]["spec"]["template"]["spec"]["containers"][0]
    assert contract.API_KEY_ENV not in {e["name"] for e in container["env"]}
    assert "ports" not in container


def test_runner_config_is_the_contract_and_holds_no_secret_value() -> None:
    config_map = children_of("defaults")["ConfigMap/q3-runner-config"]
    config = contract.RunnerConfig.model_validate_json(config_map["data"][contract.CONFIG_FILE])
    assert config.run == contract.RunIdentity(namespace="team-a", name="q3", uid="uid-q3")
    assert config.spec == spec_of()
    assert config.checkpoint.store == "ConfigMap"
    assert config.progress_interval_seconds == SETTINGS.progress_interval_seconds
    assert "tok" not in config_map["data"][contract.CONFIG_FILE].replace("Tokens", "")


def test_pvc_carries_the_requested_storage_class_and_size() -> None:
    claim = children_of("pvc-store")["PersistentVolumeClaim/q3-ckpt"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast",
    }


def test_stream_service_selects_the_runner_pod_by_label() -> None:
    service = children_of("defaults")["Service/q3-stream"]
    job = children_of("defaults")["Job/q3-runner"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["name"] == contract.STREAM_PORT_NAME
    # The Service routes to the pod only once its stream is served.
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"] == {"tcpSocket": {"port": contract.STREAM_PORT_NAME}, "periodSeconds": 1}


def test_children_carry_only_the_operators_labels() -> None:
    # kopf.adopt copies an owner's labels; an Argo CD tracking label copied onto children would
    # make Argo CD claim and prune them, so the owner is passed without its labels.
    expected = {
        constants.LABEL_NAME,
        constants.LABEL_INSTANCE,
        constants.LABEL_COMPONENT,
        constants.LABEL_PART_OF,
        constants.LABEL_MANAGED_BY,
        constants.LABEL_RUN,
        constants.LABEL_ROLE,
    }
    for obj in children_of("defaults").values():
        assert set(obj["metadata"]["labels"]) == expected


def test_recreated_job_carries_the_restarts_made_before_it() -> None:
    job = build_job(OWNER, spec_of(), SETTINGS, deadline=DEADLINE, now=NOW, restarts_before=2)
    assert job["metadata"]["annotations"][RESTARTS_BEFORE_ANNOTATION] == "2"


@pytest.mark.parametrize(("throttled", "expected"), [(True, "http://permits.agentrun-system:8090"), (False, None)])
def test_only_throttled_runs_are_told_the_permit_server(throttled: bool, expected: str | None) -> None:
    settings = OperatorSettings(permit_server_url="http://permits.agentrun-system:8090")
    spec = spec_of(throttle={"enabled": throttled, "pool": "openai-org"})
    config = runner_config(OWNER, spec, settings)
    assert config.permit_server_url == expected


def test_without_a_permit_server_url_throttled_runs_keep_their_own_limiter() -> None:
    config = runner_config(OWNER, spec_of(throttle={"enabled": True}), OperatorSettings())
    assert config.permit_server_url is None


def test_runner_stream_keep_alive_outlasts_the_gateways_pooled_connections() -> None:
    config = runner_config(OWNER, spec_of(), SETTINGS)
    expected = runner_server_timeouts(StreamBudget.from_spec(spec_of())).keep_alive_seconds
    assert config.stream_keep_alive_seconds == expected
    assert config.stream_keep_alive_seconds > GATEWAY_UPSTREAM_POOL_IDLE_SECONDS


def test_the_runner_gets_its_permit_key_and_stream_token_from_two_secrets() -> None:
    objects = children_of("defaults")
    env = {e["name"]: e for e in objects["Job/q3-runner"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.PERMIT_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "q3-permit-key", "key": "key"}
    assert env[contract.STREAM_TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {"name": "q3-stream-token", "key": "token"}
    assert objects["Secret/q3-permit-key"]["stringData"] == {"key": "key"}
    assert objects["Secret/q3-stream-token"]["stringData"] == {"token": "tok"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_gateway_is_granted_the_streaming_runs_stream_token_alone(version: str) -> None:
    settings = OperatorSettings(gateway_service_account="agentrun-system/gateway")
    objects = {
        f"{o['kind']}/{o['metadata']['name']}": o
        for o in build_children(
            OWNER, spec_of(), settings, stream_token="tok", permit_key="key", deadline=DEADLINE, now=NOW
        )
    }
    role, binding = objects["Role/q3-stream-reader"], objects["RoleBinding/q3-stream-reader"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["q3-stream-token"], "verbs": ["get"]}
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gateway", "namespace": "agentrun-system"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "q3-stream-reader"}
    for obj in (role, binding):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        kubernetes_validate.validate(obj, version, strict=True)
    not_streaming = build_children(
        OWNER,
        spec_of(streaming={"enabled": False}),
        settings,
        stream_token="tok",
        permit_key="key",
        deadline=DEADLINE,
        now=NOW,
    )
    assert not [o for o in not_streaming if o["metadata"]["name"] == "q3-stream-reader"]
