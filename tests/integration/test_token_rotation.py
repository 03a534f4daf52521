"""The operator, the runner and the stream gateway survive the rotation of their ServiceAccount token, on the
real control plane.

Each process reads its token from a file, as a pod reads its projected token. The test issues a token bound to
a Secret (TokenRequest ``boundObjectRef``), then writes a new token into the file and deletes the first
Secret: the API server refuses the first token from then on, as it refuses an expired one. A process that kept
the token it read at start-up would fail every request after that; each keeps working."""

import asyncio
import base64
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import agentrun_operator.handlers
from agentrun_api import constants
from agentrun_common.kube.credentials import in_cluster
from agentrun_runner.kube import ConfigMaps
from tests.harness.controlplane import ControlPlane
from tests.harness.gateway import ApiEndpoint, Gateway, fast_settings, stream_token_secret
from tests.harness.identities import SYSTEM_NAMESPACE, gateway_identity, grant_stream_token_to_gateway
from tests.harness.inprocess_operator import Cluster, eventually, run_manifest, running_operator
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration


class RotatingToken:
    """A ServiceAccount's token in a file, each one bound to its own Secret in the account's namespace."""

    def __init__(self, control_plane: ControlPlane, account: str, path: Path) -> None:
        self._admin = control_plane.admin
        self._account = account
        self.path = path
        self._bound_to: dict[str, Any] | None = None
        self.token = self._issue()

    def _issue(self) -> str:
        secret = self._admin.post(
            f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/secrets",
            json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"token-anchor-{secrets.token_hex(4)}"}},
        )
        secret.raise_for_status()
        self._bound_to = secret.json()["metadata"]
        answer = self._admin.post(
            f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/serviceaccounts/{self._account}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "name": self._bound_to["name"],
                        "uid": self._bound_to["uid"],
                    }
                },
            },
        )
        answer.raise_for_status()
        token = str(answer.json()["status"]["token"])
        # Replaced in one step, as the kubelet swaps a projected volume's files.
        staged = self.path.with_name(self.path.name + ".new")
        staged.write_text(token)
        staged.chmod(0o600)
        os.replace(staged, self.path)
        return token

    def authenticated(self, token: str) -> bool:
        review = self._admin.post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        review.raise_for_status()
        return bool(review.json()["status"].get("authenticated"))

    async def rotate(self) -> None:
        """A new token in the file; the old one's Secret deleted, so the API server refuses the old token."""
        old_token, old_anchor = self.token, self._bound_to
        assert old_anchor is not None
        self.token = self._issue()
        self._admin.delete(f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/secrets/{old_anchor['name']}").raise_for_status()
        # The API server caches a token's authentication for about ten seconds.
        deadline = time.monotonic() + 30
        while self.authenticated(old_token):
            assert time.monotonic() < deadline, "the API server still accepts the token whose Secret is gone"
            await asyncio.sleep(0.5)
        assert self.authenticated(self.token)


def token_file_kubeconfig(path: Path, control_plane: ControlPlane, token_file: Path, namespace: str) -> Path:
    """A kubeconfig whose user reads its token from ``token_file`` (``tokenFile``), as client-go's does."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": control_plane.url, "certificate-authority": str(control_plane.ca_file)},
                    }
                ],
                "users": [{"name": "operator", "user": {"tokenFile": str(token_file)}}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "test", "user": "operator", "namespace": namespace}}
                ],
                "current-context": "test",
            }
        )
    )
    path.chmod(0o600)
    return path


def throttle_pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "ThrottlePool",
        "metadata": {"name": name},
        "spec": {"maxRequestsInFlight": 2, "requestsPerMinute": 600},
    }


async def test_operator_keeps_working_after_its_token_rotates(cluster: Cluster, tmp_path: Path) -> None:
    control_plane = cluster.testbed.control_plane
    token = RotatingToken(control_plane, "agentrun-operator", tmp_path / "operator-token")
    cluster.operator_kubeconfig = token_file_kubeconfig(
        tmp_path / "operator.kubeconfig", control_plane, token.path, cluster.namespace
    )
    cluster.add_api_key_secret()
    async with running_operator(cluster) as operator:
        cluster.create(run_manifest("before"))
        await eventually(lambda: cluster.get("Job", "before-runner"), timeout=30, message="the first run's Job")

        await token.rotate()

        # kopf's own requests: its diff-base annotation on a new ThrottlePool is a patch with kopf's credentials,
        # which it must log in for again (``handlers.login``) once the API server refuses the old token.
        cluster.create(throttle_pool("after"))
        pool = await eventually(
            lambda: (cluster.get("ThrottlePool", "after") or {}).get("metadata", {}).get("annotations"),
            timeout=30,
            message="kopf's annotation on the pool created after the rotation",
        )
        assert any(key.startswith(constants.GROUP) for key in pool)
        login = agentrun_operator.handlers.login(memo=operator.memo)
        assert login.token == token.token
        # The operator's own client: a run created after the rotation gets its children and its Job.
        cluster.create(run_manifest("after"))
        await eventually(lambda: cluster.get("Job", "after-runner"), timeout=30, message="the second run's Job")
        assert cluster.status("after").get("phase") == "Pending"


async def test_runner_configmaps_keep_working_after_the_pod_token_rotates(cluster: Cluster, tmp_path: Path) -> None:
    """The runner's in-cluster credentials: a service account directory with the token, its CA and the API
    server's address in KUBERNETES_SERVICE_HOST/PORT, as the kubelet gives a pod."""
    control_plane = cluster.testbed.control_plane
    account = tmp_path / "serviceaccount"
    account.mkdir()
    shutil.copyfile(control_plane.ca_file, account / "ca.crt")
    token = RotatingToken(control_plane, "agentrun-operator", account / "token")
    host, port = control_plane.url.removeprefix("https://").rsplit(":", 1)
    configmaps = ConfigMaps(
        in_cluster({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}, account), cluster.namespace
    )
    try:
        await configmaps.put_data("rotation", {"step": "before"}, {"test": "rotation"})
        await token.rotate()
        await configmaps.put_data("rotation", {"step": "after"}, {"test": "rotation"})
        assert await configmaps.get_data("rotation") == {"step": "after"}
    finally:
        await configmaps.close()


async def test_gateway_keeps_working_after_its_token_rotates(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    control_plane = testbed.control_plane
    gateway_identity(control_plane).grant(namespace)
    token = RotatingToken(control_plane, "agentrun-stream-gateway", tmp_path / "gateway-token")
    api = ApiEndpoint(control_plane.url, str(token.path), str(control_plane.ca_file))
    for run in ("before", "after"):
        testbed.admin.post(
            f"/api/v1/namespaces/{namespace}/secrets", json=stream_token_secret(namespace, run, f"{run}-token")
        ).raise_for_status()
        grant_stream_token_to_gateway(testbed.admin, namespace, run)  # as the operator does for a streaming run

    async with Gateway(fast_settings(api, upstream_port=1), namespace, "before") as gateway:
        base = f"http://127.0.0.1:{gateway.port}/runs/{namespace}"
        async with httpx.AsyncClient(timeout=10) as client:

            async def read(run: str, bearer: str) -> httpx.Response:
                return await client.get(f"{base}/{run}/events", headers={"Authorization": f"Bearer {bearer}"})

            # The stream token checks out (a Secret read), then the AgentRun read answers: there is none.
            assert (await read("before", "before-token")).status_code == 404
            await token.rotate()
            answer = await read("after", "after-token")
            assert answer.status_code == 404, answer.text
            # A bearer that is no stream token goes to a TokenReview, which the gateway must still be let make.
            refused = await read("after", base64.b64encode(b"not-a-token").decode())
            assert refused.status_code == 401, refused.text
