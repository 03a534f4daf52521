"""The runs API for tests and benchmarks: the gateway in-process with the chart's RBAC, API keys (hashed in
Secrets of the gateway's namespace), AgentRunTemplates, and Kubernetes callers with RBAC of their own."""

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from aiohttp.abc import AbstractResolver

from agentrun_api import template
from agentrun_api.constants import API_VERSION, GROUP
from agentrun_api.contract import STREAM_PORT
from agentrun_gateway import api_keys
from agentrun_gateway.runs_settings import RunsApiSettings
from tests.harness.gateway import Gateway, fast_settings, gateway_endpoint
from tests.harness.identities import SYSTEM_NAMESPACE
from tests.harness.testbed import KubeTestbed


@dataclasses.dataclass
class RunsApi:
    """A gateway serving the runs API on loopback, and how to reach it."""

    base_url: str
    testbed: KubeTestbed

    def client(self, bearer: str, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {bearer}"}, **{"timeout": 15.0, **kwargs}
        )

    def new_api_key(self, namespace: str) -> str:
        """A fresh key for ``namespace``: its Secret (the hash) applied where the gateway reads keys."""
        key, presented = api_keys.new_key()
        body = api_keys.key_secret(presented, SYSTEM_NAMESPACE, namespace)
        self.testbed.admin.post(f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/secrets", json=body).raise_for_status()
        return key


@contextlib.asynccontextmanager
async def runs_api(
    testbed: KubeTestbed,
    namespaces: list[str],
    directory: Path,
    resolver: AbstractResolver | None = None,
    **settings: Any,
) -> AsyncIterator[RunsApi]:
    """The gateway with its chart rules granted in ``namespaces``; ``settings`` are RunsApiSettings fields. With a
    ``resolver`` (a ClusterResolver) it reaches each run's runner live through the run's stream Service, as in a
    pod; without, on 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    api = gateway_endpoint(testbed, namespaces[0], directory)
    for namespace in namespaces[1:]:
        gateway_endpoint(testbed, namespace, directory)
    own = RunsApiSettings(**{"api_keys_namespace": SYSTEM_NAMESPACE, "api_key_cache_seconds": 1.0, **settings})
    gateway_settings = fast_settings(api, STREAM_PORT if resolver is None else None, runs_api=own)
    async with Gateway(gateway_settings, namespaces[0], "", resolver) as gateway:
        yield RunsApi(f"http://127.0.0.1:{gateway.port}", testbed)


def create_template(
    testbed: KubeTestbed, namespace: str, name: str, run: Mapping[str, Any], allowed_overrides: list[str]
) -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": template.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"run": dict(run), "allowedOverrides": allowed_overrides},
    }
    path = f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/{template.PLURAL}"
    testbed.admin.post(path, json=body).raise_for_status()


def kubernetes_caller(testbed: KubeTestbed, namespace: str, account: str, verbs: list[str]) -> str:
    """A real token of a new ServiceAccount in ``namespace`` granted ``verbs`` on agentruns there (none: no
    binding at all)."""
    rules = [{"apiGroups": [GROUP], "resources": ["agentruns"], "verbs": verbs}] if verbs else []
    return service_account_caller(testbed, namespace, account, rules)[1]


def service_account_caller(
    testbed: KubeTestbed, namespace: str, account: str, rules: list[dict[str, Any]]
) -> tuple[str, str]:
    """A new ServiceAccount of ``namespace`` with a Role of ``rules`` (none: no binding): its username and a real
    token of it."""
    admin = testbed.admin
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    admin.post(base, json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
    if rules:
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        admin.post(f"{rbac}/roles", json={"metadata": {"name": account}, "rules": rules}).raise_for_status()
        binding = {
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
        admin.post(f"{rbac}/rolebindings", json=binding).raise_for_status()
    answer = admin.post(
        f"{base}/{account}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    answer.raise_for_status()
    return f"system:serviceaccount:{namespace}:{account}", str(answer.json()["status"]["token"])


def agent_runs(testbed: KubeTestbed, namespace: str) -> list[dict[str, Any]]:
    """Every AgentRun in the namespace, as an admin sees them."""
    answer = testbed.admin.get(f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/agentruns")
    answer.raise_for_status()
    items: list[dict[str, Any]] = answer.json()["items"]
    return items
