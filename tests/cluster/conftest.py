"""Access to a real cluster, only when asked for and only to a cluster that is safe to write to.

The cluster tests run only with AGENTRUN_E2E_CLUSTER=1. They then read KUBECONFIG (or ~/.kube/config), use the
context AGENTRUN_E2E_CONTEXT (default: the current context), and refuse any context whose name neither starts
with "kind-" nor contains "test", so a stray kubeconfig pointing at production is never written to.
AGENTRUN_E2E_ALLOW_ANY_CONTEXT=1 lifts that guard for a cluster you have checked yourself. Without the opt-in,
every cluster test is skipped with the reason printed in pytest's summary.
"""

import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest
from kubernetes import client, config

OPT_IN = "AGENTRUN_E2E_CLUSTER"
CONTEXT = "AGENTRUN_E2E_CONTEXT"
ALLOW_ANY_CONTEXT = "AGENTRUN_E2E_ALLOW_ANY_CONTEXT"
RELEASE_NAMESPACE = "AGENTRUN_E2E_RELEASE_NAMESPACE"


@dataclass(frozen=True)
class Cluster:
    """A kubeconfig context the tests may use, and where the chart is installed in it."""

    context: str
    api: client.ApiClient
    release_namespace: str


def refusal(context: str, environ: Mapping[str, str]) -> str | None:
    """Why the tests must not touch this context, or None when they may: kind's own contexts and contexts named
    for testing are allowed; any other only with the explicit override."""
    if context.startswith("kind-") or "test" in context or environ.get(ALLOW_ANY_CONTEXT) == "1":
        return None
    return (
        f"refusing kubeconfig context {context!r}: its name neither starts with 'kind-' nor contains 'test'. "
        f"Point {CONTEXT} at a test cluster, or set {ALLOW_ANY_CONTEXT}=1 if you really mean this one."
    )


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            f"no real cluster: set {OPT_IN}=1 (and KUBECONFIG) to run the cluster tests, e.g. `make e2e-cluster`"
        )
    try:
        contexts, current = config.list_kube_config_contexts()
    except (config.ConfigException, OSError) as error:
        pytest.fail(f"{OPT_IN}=1 but no usable kubeconfig: {error}", pytrace=False)
    name = os.environ.get(CONTEXT) or current["name"]
    if name not in {context["name"] for context in contexts}:
        pytest.fail(f"{CONTEXT}={name!r} is not a context of the kubeconfig", pytrace=False)
    reason = refusal(name, os.environ)
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    api = config.new_client_from_config(context=name)
    return Cluster(context=name, api=api, release_namespace=os.environ.get(RELEASE_NAMESPACE, "agentrun-system"))


@pytest.fixture
def test_namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of its own for each test, deleted afterwards (with everything in it)."""
    name = f"agentrun-e2e-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)
