"""A run's objects on the test control plane, as the operator makes them before its runner starts: the AgentRun,
the runner's ServiceAccount with the operator's own Role and RoleBinding for it (agentrun_operator.children), the
empty progress ConfigMap, and the stream-token Secret; and a kubeconfig holding a real token of that
ServiceAccount, so a runner started by a test has exactly a runner pod's rights.

    run = provision_run(testbed, namespace, spec, tmp_path)
    config = make_config(spec, tmp_path, namespace=run.namespace, name=run.name, uid=run.uid)
    env = runner_env(tmp_path, config, {"KUBECONFIG": str(run.kubeconfig)})
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentrun_api.spec import AgentRunSpec
from agentrun_operator import children
from agentrun_operator.children import RunOwner
from tests.harness.identities import grant_stream_token_to_gateway
from tests.harness.testbed import KubeTestbed

AGENTRUN_API = "/apis/agentrun.dev/v1alpha1"
RBAC_API = "/apis/rbac.authorization.k8s.io/v1"
TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class ProvisionedRun:
    namespace: str
    name: str
    uid: str
    account: str
    token: str  # a real token of the runner's ServiceAccount
    kubeconfig: Path  # with that token, its context's namespace the run's


def agentrun_manifest(namespace: str, name: str, spec: AgentRunSpec) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _owned(body: dict[str, Any], owner: RunOwner) -> dict[str, Any]:
    """What the operator does to a child (kopf.adopt): the run's namespace and a controller owner reference."""
    return children.adopted(body, owner)


def _create(admin: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = admin.post(path, json=body)
    if answer.status_code >= 300:
        raise AssertionError(f"POST {path}: HTTP {answer.status_code}: {answer.text[:500]}")
    created: dict[str, Any] = answer.json()
    return created


def provision_run(
    testbed: KubeTestbed,
    namespace: str,
    spec: AgentRunSpec,
    directory: Path,
    *,
    name: str = "demo",
    stream_token: str | None = None,
) -> ProvisionedRun:
    """Create the run and what its runner needs, as the operator would, and a kubeconfig for its runner."""
    admin = testbed.admin
    run = _create(admin, f"{AGENTRUN_API}/namespaces/{namespace}/agentruns", agentrun_manifest(namespace, name, spec))
    owner = RunOwner(namespace=namespace, name=name, uid=run["metadata"]["uid"])
    core = f"/api/v1/namespaces/{namespace}"
    _create(admin, f"{core}/serviceaccounts", _owned(children.build_service_account(owner), owner))
    _create(admin, f"{RBAC_API}/namespaces/{namespace}/roles", _owned(children.build_role(owner, spec), owner))
    _create(admin, f"{RBAC_API}/namespaces/{namespace}/rolebindings", _owned(children.build_role_binding(owner), owner))
    _create(admin, f"{core}/configmaps", _owned(children.build_progress_config_map(owner), owner))
    if stream_token is not None:
        secret = children.build_stream_token_secret(owner, stream_token)
        _create(admin, f"{core}/secrets", _owned(secret, owner))
        grant_stream_token_to_gateway(admin, namespace, name)
    account = children.identity_name(name)
    answer = admin.post(
        f"{core}/serviceaccounts/{account}/token",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_SECONDS},
        },
    )
    answer.raise_for_status()
    token = str(answer.json()["status"]["token"])
    kubeconfig = testbed.control_plane.kubeconfig_for_token(
        directory / f"{name}-runner.kubeconfig",
        token,
        user=f"system:serviceaccount:{namespace}:{account}",
        namespace=namespace,
    )
    return ProvisionedRun(
        namespace=namespace, name=name, uid=owner.uid, account=account, token=token, kubeconfig=kubeconfig
    )


def set_run_phase(testbed: KubeTestbed, namespace: str, name: str, phase: str) -> None:
    """Write the AgentRun's status.phase, as the operator would."""
    answer = testbed.admin.patch(
        f"{AGENTRUN_API}/namespaces/{namespace}/agentruns/{name}/status",
        headers={"Content-Type": "application/merge-patch+json"},
        json={"status": {"phase": phase}},
    )
    answer.raise_for_status()


def list_configmaps(testbed: KubeTestbed, namespace: str, prefix: str = "") -> list[dict[str, Any]]:
    """The namespace's ConfigMaps whose names start with ``prefix``, by name."""
    answer = testbed.admin.get(f"/api/v1/namespaces/{namespace}/configmaps")
    answer.raise_for_status()
    found = [cm for cm in answer.json()["items"] if cm["metadata"]["name"].startswith(prefix)]
    return sorted(found, key=lambda cm: cm["metadata"]["name"])


def recreate_run(testbed: KubeTestbed, namespace: str, name: str, *, timeout_seconds: float = 90.0) -> str:
    """Delete the AgentRun orphaning its dependents (the ConfigMaps, Secret and Role it owned stay, owned by nobody,
    as they do until the garbage collector gets to them) and create a new one of the same name and spec; returns
    its uid. kube-controller-manager's garbage collector removes the orphan finalizer; early in a session it may
    take up to its 30 s discovery period to learn of the AgentRun CRD."""
    path = f"{AGENTRUN_API}/namespaces/{namespace}/agentruns/{name}"
    old = testbed.admin.get(path)
    old.raise_for_status()
    testbed.admin.request(
        "DELETE", path, json={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Orphan"}
    ).raise_for_status()
    deadline = time.monotonic() + timeout_seconds
    while testbed.admin.get(path).status_code != 404:
        if time.monotonic() > deadline:
            raise AssertionError(f"AgentRun {namespace}/{name} still exists {timeout_seconds:.0f} s after deletion")
        time.sleep(0.1)
    body = {key: old.json()[key] for key in ("apiVersion", "kind", "spec")}
    body["metadata"] = {"name": name, "namespace": namespace}
    created = _create(testbed.admin, f"{AGENTRUN_API}/namespaces/{namespace}/agentruns", body)
    uid = str(created["metadata"]["uid"])
    assert uid != old.json()["metadata"]["uid"]
    return uid


def set_owner(testbed: KubeTestbed, namespace: str, configmap: str, run: str, uid: str) -> None:
    """Make the run of that uid the ConfigMap's controller owner, as a runner's own ConfigMaps are owned."""
    owner = RunOwner(namespace=namespace, name=run, uid=uid)
    references = children.adopted({"metadata": {}}, owner)["metadata"]["ownerReferences"]
    testbed.admin.patch(
        f"/api/v1/namespaces/{namespace}/configmaps/{configmap}",
        headers={"Content-Type": "application/merge-patch+json"},
        json={"metadata": {"ownerReferences": references}},
    ).raise_for_status()
