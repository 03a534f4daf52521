"""The chart's NetworkPolicies on the real API server: created with strict field validation and read back
unchanged. (The test ground's node agent enforces no NetworkPolicy; what a policy blocks is a network
plugin's job and is not tested here, see docs/security.md.)"""

from typing import Any

import helm_python
import pytest
import yaml

from tests.harness.chart import CHART_DIR, RELEASE, ci_scenarios
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration


def rendered_policies(namespace: str) -> list[dict[str, Any]]:
    """The networkpolicy scenario, released into ``namespace`` with its runners there too."""
    values = ci_scenarios()["networkpolicy"]
    values = {**values, "networkPolicy": {**values["networkPolicy"], "runners": {"namespaces": [namespace]}}}
    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    return [
        document
        for path, text in rendered.items()
        if path.endswith("networkpolicy.yaml")
        for document in yaml.safe_load_all(text)
        if document and document.get("kind") == "NetworkPolicy"
    ]


def test_the_api_server_accepts_every_network_policy_as_rendered(testbed: KubeTestbed, namespace: str) -> None:
    policies = rendered_policies(namespace)
    assert len(policies) == 3  # the operator's, the gateway's and the runners'
    base = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    for policy in policies:
        created = testbed.admin.post(base, params={"fieldValidation": "Strict"}, json=policy)
        assert created.status_code == 201, created.text
        stored = testbed.admin.get(f"{base}/{policy['metadata']['name']}").json()
        assert stored["spec"] == policy["spec"]
        assert stored["metadata"]["labels"] == policy["metadata"]["labels"]
