"""The runner image's trust settings (no CA bundle file, the hashed certificate directory) still
verify the model endpoint's certificate through the real openai SDK, and load no certificate up front.

Certificates are made by the ``openssl`` command line tool; the hashed directory by ``openssl rehash``,
as Debian's update-ca-certificates makes /etc/ssl/certs.
"""

import random
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from agentrun_runner.model import ModelClient, ModelFailedError
from agentrun_runner.settings import RunnerSettings
from tests.harness.model_server import Answer, ModelServer, by_turn
from tests.harness.runner import API_KEY, make_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line tool"),
]

DOCKERFILE = Path(__file__).resolve().parents[2] / "runner_image" / "Dockerfile"


def openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> Path:
    """A CA certificate in its own hashed trust directory; returns the directory."""
    trust = directory / f"{name}-trust"
    trust.mkdir()
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{trust.name}/{name}.pem", "-days", "1", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl("rehash", trust.name, cwd=directory)
    return trust


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A server context for 127.0.0.1 signed by one CA; that CA's trust directory and another's."""
    trust = make_ca(tmp_path, "model-ca")
    other = make_ca(tmp_path, "other-ca")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=tmp_path,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{trust.name}/model-ca.pem", "-CAkey", "model-ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext",
        cwd=tmp_path,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    return server, trust, other


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
