"""The runner image's trust settings (no CA bundle file, the hashed certificate directory) still
verify the model endpoint's certificate through the real openai SDK, and load no certificate up front.

Certificates are made by the ``openssl`` command line tool (tests.harness.tls).
"""

import random
import re
import ssl
from pathlib import Path

import pytest

from agentrun_runner.model import ModelClient, ModelFailedError
from agentrun_runner.settings import RunnerSettings
from tests.harness.model_server import Answer, ModelServer, by_turn
from tests.harness.runner import API_KEY, make_spec
from tests.harness.tls import OPENSSL, loopback_certificates

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line tool"),
]

DOCKERFILE = Path(__file__).resolve().parents[2] / "runner_image" / "Dockerfile"


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A server context for 127.0.0.1 signed by one CA; that CA's trust directory and another's."""
    made = loopback_certificates(tmp_path)
    return made.server, made.trust, made.other_trust


def image_trust_settings() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    return dict(re.findall(r'\b(SSL_CERT_(?:FILE|DIR))=("[^"]*"|\S+)', text))


def test_the_image_trusts_the_hashed_directory_and_no_bundle_file() -> None:
    assert image_trust_settings() == {"SSL_CERT_FILE": '""', "SSL_CERT_DIR": "/etc/ssl/certs"}


def model_client(base_url: str) -> ModelClient:
    spec = make_spec(base_url, model={"maxRetries": 0})
    return ModelClient(
        spec.model,
        api_key=API_KEY,
        limiter=None,
        max_queue_wait_seconds=60,
        settings=RunnerSettings(),
        rng=random.Random(1),
    )


async def ask(client: ModelClient) -> str | None:
    answer = await client.complete(
        [{"role": "user", "content": "hello"}],
        [],
        remaining=lambda: 30.0,
        on_token=None,
        on_queue_wait=lambda _seconds: None,
        max_completion_tokens=None,
    )
    content: str | None = answer.message["content"]
    return content


async def test_the_sdk_verifies_the_endpoint_through_the_hashed_directory(
    certificates: tuple[ssl.SSLContext, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context, trust, _ = certificates
    monkeypatch.setenv("SSL_CERT_FILE", "")
    monkeypatch.setenv("SSL_CERT_DIR", str(trust))
    # Nothing is parsed up front: OpenSSL looks a CA up in the directory when a handshake needs it.
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 0
    async with ModelServer(by_turn([Answer("over TLS")]), tls=server_context) as server:
        client = model_client(server.base_url)
        assert await ask(client) == "over TLS"
        await client.close()


async def test_an_endpoint_signed_by_an_unknown_ca_is_refused(
    certificates: tuple[ssl.SSLContext, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context, _, other = certificates
    monkeypatch.setenv("SSL_CERT_FILE", "")
    monkeypatch.setenv("SSL_CERT_DIR", str(other))
    async with ModelServer(by_turn([Answer("must not arrive")]), tls=server_context) as server:
        client = model_client(server.base_url)
        with pytest.raises(
            ModelFailedError, match=rf"could not reach 127\.0\.0\.1:{server.port}: .*CERTIFICATE_VERIFY_FAILED"
        ):
            await ask(client)
        await client.close()
    assert server.requests == []
