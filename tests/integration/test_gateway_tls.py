"""The stream gateway verifies the Kubernetes API server's certificate, always: with the CA bundle it is given,
else the in-cluster CA or the system trust store; a certificate that does not verify is refused, and the
gateway says which setting to change. The API server is the real one of the test control plane, serving a
certificate its own CA signed."""

import asyncio
import dataclasses
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentrun_common.settings import SettingsError
from agentrun_gateway.settings import GatewaySettings
from tests.harness.fake_stream_runner import FakeStreamRunner
from tests.harness.gateway import (
    ApiEndpoint,
    Gateway,
    fast_settings,
    gateway_endpoint,
    read_until_finished,
    stream_token_secret,
)
from tests.harness.identities import grant_stream_token_to_gateway
from tests.harness.run_identity import AGENTRUN_API, set_run_phase
from tests.harness.source_roots import pythonpath
from tests.harness.testbed import KubeTestbed
from tests.harness.tls import OPENSSL, make_ca, openssl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line tool"),
]

RUN = "r1"
STREAM_TOKEN = "tls-stream-token"
CA_SETTING = "AGENTRUN_GATEWAY_KUBE_CA_FILE"


@dataclasses.dataclass(frozen=True)
class Trust:
    """Hashed trust directories, as the system's store is laid out: one holding the cluster's CA, one another CA."""

    cluster: Path
    other: Path


@pytest.fixture
def trust(testbed: KubeTestbed, tmp_path: Path) -> Trust:
    cluster = tmp_path / "cluster-trust"
    cluster.mkdir()
    shutil.copy(testbed.control_plane.ca_file, cluster / "cluster-ca.pem")
    openssl("rehash", cluster.name, cwd=tmp_path)
    return Trust(cluster=cluster, other=make_ca(tmp_path, "other-ca"))


@pytest.fixture
def api(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> ApiEndpoint:
    """A Running run with its stream token in the test's namespace, and the gateway's ServiceAccount there."""
    secret = stream_token_secret(namespace, RUN, STREAM_TOKEN)
    testbed.admin.post(f"/api/v1/namespaces/{namespace}/secrets", json=secret).raise_for_status()
    grant_stream_token_to_gateway(testbed.admin, namespace, RUN)
    run = {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": RUN, "namespace": namespace},
        "spec": {
            "instructions": "Relay.",
            "input": "Go.",
            "model": {"name": "m"},
            "maxExecutionTime": "1h",
            "maxIterations": 1,
        },
    }
    testbed.admin.post(f"{AGENTRUN_API}/namespaces/{namespace}/agentruns", json=run).raise_for_status()
    set_run_phase(testbed, namespace, RUN, "Running")
    return gateway_endpoint(testbed, namespace, tmp_path)


@pytest.fixture
async def runner() -> AsyncIterator[FakeStreamRunner]:
    fake = FakeStreamRunner(STREAM_TOKEN)
    await fake.start()
    await fake.emit("finished", {"phase": "Succeeded"})
    yield fake
    await fake.kill()


def system_trust(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """The system trust store is this hashed directory alone (OpenSSL reads both variables per context)."""
    monkeypatch.setenv("SSL_CERT_FILE", "")
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))


async def read(api: ApiEndpoint, namespace: str, runner: FakeStreamRunner, **settings: str) -> int:
    """One reader through a gateway with these settings: the HTTP status it gets."""
    async with Gateway(fast_settings(api, runner.port, **settings), namespace, RUN) as gateway:
        status, _ = await asyncio.wait_for(read_until_finished(gateway.url, STREAM_TOKEN), 20)
    return status


async def test_an_api_server_the_trust_store_does_not_verify_is_refused_and_the_log_names_the_setting(
    api: ApiEndpoint,
    namespace: str,
    runner: FakeStreamRunner,
    trust: Trust,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    system_trust(monkeypatch, trust.other)
    with caplog.at_level(logging.WARNING, logger="agentrun_gateway"):
        status = await read(api, namespace, runner, kube_ca_file="")

    # Never read without verifying: the handshake fails before any request (the Secret, the run) is sent.
    assert status == 503
    assert any(CA_SETTING in record.getMessage() and "certificate" in record.getMessage() for record in caplog.records)


async def test_without_a_ca_file_the_system_trust_store_verifies_the_api_server(
    api: ApiEndpoint, namespace: str, runner: FakeStreamRunner, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_trust(monkeypatch, trust.cluster)
    assert await read(api, namespace, runner, kube_ca_file="") == 200


async def test_the_configured_ca_file_verifies_the_api_server(
    api: ApiEndpoint, namespace: str, runner: FakeStreamRunner, trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_trust(monkeypatch, trust.other)
    assert await read(api, namespace, runner, kube_ca_file=api.ca_file) == 200


def test_a_ca_file_that_cannot_be_read_is_a_settings_error_naming_the_variable(tmp_path: Path) -> None:
    settings = GatewaySettings(kube_api_url="https://127.0.0.1:6443", kube_ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(SettingsError, match=rf"{CA_SETTING}=.*missing\.crt"):
        settings.kube_tls_context()


async def test_python_m_agentrun_gateway_with_an_unreadable_ca_file_exits_with_one_line_naming_it(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "AGENTRUN_GATEWAY_HOST": "127.0.0.1",
        "AGENTRUN_GATEWAY_PORT": "0",
        "AGENTRUN_GATEWAY_KUBE_API_URL": "https://127.0.0.1:9",
        CA_SETTING: str(tmp_path / "missing.crt"),
        "PYTHONPATH": pythonpath(),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentrun_gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    message = stderr.decode()
    assert message.startswith(f"agentrun-gateway: {CA_SETTING}=")
    assert "Traceback" not in message
