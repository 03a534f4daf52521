"""The stream gateway verifies the Kubernetes API server's certificate, always: with the CA bundle it is given,
else the in-cluster CA or the system trust store; a certificate that does not verify is refused, and the
gateway says which setting to change. The API server is the emulated one behind a TLS front on 127.0.0.1."""

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agentrun_gateway.settings import GatewaySettings, SettingsError
from tests.harness.apiserver import EmulatedApiServer
from tests.harness.fake_stream_runner import FakeStreamRunner
from tests.harness.gateway import Gateway, add_stream_token, fast_settings, read_until_finished, set_run_phase
from tests.harness.local_cluster import REPO_ROOT
from tests.harness.tls import OPENSSL, LoopbackCertificates, loopback_certificates, tls_front

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line tool"),
]

NAMESPACE = "team"
RUN = "r1"
STREAM_TOKEN = "tls-stream-token"
CA_SETTING = "AGENTRUN_GATEWAY_KUBE_CA_FILE"


@pytest.fixture
def certificates(tmp_path: Path) -> LoopbackCertificates:
    return loopback_certificates(tmp_path)


@pytest.fixture
async def https_api_url(apiserver: EmulatedApiServer, certificates: LoopbackCertificates) -> AsyncIterator[str]:
    """The emulated API server, with a run that has ended and its stream token, reached over HTTPS."""
    add_stream_token(apiserver, NAMESPACE, RUN, STREAM_TOKEN)
    store = apiserver.store
    run = {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": RUN, "namespace": NAMESPACE},
        "spec": {
            "instructions": "Relay.",
            "input": "Go.",
            "model": {"name": "m"},
            "maxExecutionTime": "1h",
            "maxIterations": 1,
        },
    }
    store.create(store.resource("agentruns"), NAMESPACE, run)
    set_run_phase(apiserver, NAMESPACE, RUN, "Running")
    backend_port = urlsplit(apiserver.url).port
    assert backend_port is not None
    async with tls_front(backend_port, certificates.server) as port:
        yield f"https://127.0.0.1:{port}"


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


async def read(apiserver: EmulatedApiServer, runner: FakeStreamRunner, **settings: str) -> int:
    """One reader through a gateway with these settings: the HTTP status it gets."""
    async with Gateway(fast_settings(apiserver, runner.port, **settings), NAMESPACE, RUN) as gateway:
        status, _ = await asyncio.wait_for(read_until_finished(gateway.url, STREAM_TOKEN), 20)
    return status


async def test_an_api_server_the_trust_store_does_not_verify_is_refused_and_the_log_names_the_setting(
    apiserver: EmulatedApiServer,
    runner: FakeStreamRunner,
    https_api_url: str,
    certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    system_trust(monkeypatch, certificates.other_trust)
    with caplog.at_level(logging.WARNING, logger="agentrun_gateway"):
        status = await read(apiserver, runner, kube_api_url=https_api_url, kube_ca_file="")

    assert status == 503  # never read without verifying: not the Secret, not the run
    assert any(CA_SETTING in record.getMessage() and "certificate" in record.getMessage() for record in caplog.records)
    assert [r.resource for r in apiserver.requests if r.resource == "secrets"] == []


async def test_without_a_ca_file_the_system_trust_store_verifies_the_api_server(
    apiserver: EmulatedApiServer,
    runner: FakeStreamRunner,
    https_api_url: str,
    certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system_trust(monkeypatch, certificates.trust)
    assert await read(apiserver, runner, kube_api_url=https_api_url, kube_ca_file="") == 200


async def test_the_configured_ca_file_verifies_the_api_server(
    apiserver: EmulatedApiServer,
    runner: FakeStreamRunner,
    https_api_url: str,
    certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system_trust(monkeypatch, certificates.other_trust)
    assert await read(apiserver, runner, kube_api_url=https_api_url, kube_ca_file=str(certificates.ca_file)) == 200


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
        "PYTHONPATH": os.pathsep.join(str(REPO_ROOT / part) for part in ("api", "operator", "runner_image", "gateway")),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentrun_gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    message = stderr.decode()
    assert message.startswith(f"agentrun-gateway: {CA_SETTING}=")
    assert "Traceback" not in message
