"""The shared client's credentials: the service account files and kubeconfigs, read without the kubernetes
package, with token files read again at every request (they rotate); and the one retry policy."""

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from agentrun_common.kube.credentials import Credentials, CredentialsError, from_kubeconfig, in_cluster, token_expiry
from agentrun_common.retry import RetryPolicy, parse_retry_after

pytestmark = pytest.mark.unit

SERVICE = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def service_account(tmp_path: Path, token: str) -> Path:
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "ca.crt").write_text("not read until a request is made\n")
    return tmp_path


def test_in_cluster_credentials_read_the_rotated_token_at_each_request(tmp_path: Path) -> None:
    account = service_account(tmp_path, "first-token")
    credentials = in_cluster(SERVICE, account)
    assert credentials.server == "https://10.0.0.1:443"
    assert credentials.ca_file == str(account / "ca.crt")
    assert credentials.authorization() == "Bearer first-token"
    (account / "token").write_text("rotated-token")
    assert credentials.authorization() == "Bearer rotated-token"


def test_in_cluster_credentials_bracket_an_ipv6_service_address(tmp_path: Path) -> None:
    credentials = in_cluster(
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, service_account(tmp_path, "t")
    )
    assert credentials.server == "https://[fd00::1]:6443"


def test_missing_service_account_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="KUBERNETES_SERVICE_HOST/PORT or the service account token"):
        in_cluster(SERVICE, tmp_path)
    with pytest.raises(CredentialsError, match="in-cluster service account or KUBECONFIG"):
        in_cluster({}, service_account(tmp_path, "t"))


def test_plain_http_needs_no_tls_context() -> None:
    assert Credentials(server="http://127.0.0.1:8080").ssl_context() is False


def write_kubeconfig(path: Path, user: dict[str, str]) -> Path:
    config = {
        "current-context": "here",
        "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "clusters": [
            {"name": "c", "cluster": {"server": "https://127.0.0.1:6443/", "certificate-authority": "ca.crt"}}
        ],
        "users": [{"name": "u", "user": user}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_kubeconfig_token_file_is_read_again_at_each_request_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    credentials = from_kubeconfig(str(write_kubeconfig(tmp_path / "config", {"tokenFile": "token"})))
    assert credentials.server == "https://127.0.0.1:6443"
    assert credentials.ca_file == str(tmp_path / "ca.crt")
    assert credentials.default_namespace == "ns"
    assert credentials.authorization() == "Bearer first"
    (tmp_path / "token").write_text("second\n")
    assert credentials.authorization() == "Bearer second"


def test_kubeconfig_exec_plugin_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", {"exec": "aws"})  # type: ignore[dict-item]
    with pytest.raises(CredentialsError, match=r"user 'u' uses an exec plugin.*give it a token, tokenFile"):
        from_kubeconfig(str(path))


def test_kubeconfig_without_a_current_context_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config").write_text(yaml.safe_dump({"contexts": []}))
    with pytest.raises(CredentialsError, match="current-context None names no context; set one"):
        from_kubeconfig(str(tmp_path / "config"))


def test_retry_policy_backs_off_exponentially_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=4, first_backoff_seconds=0.5, max_backoff_seconds=1.5, max_retry_after_seconds=10)
    assert [policy.delay(attempt) for attempt in range(3)] == [0.5, 1.0, 1.5]
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=60.0) == 10
    assert [policy.more_after(attempt) for attempt in range(4)] == [True, True, True, False]
    assert policy.retryable(429)
    assert policy.retryable(503)
    assert not policy.retryable(409)


@pytest.mark.parametrize(
    ("header", "seconds"), [("2", 2.0), ("0.5", 0.5), ("", None), ("-1", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)]
)
def test_retry_after_header(header: str, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_token_expiry_is_the_jwt_exp_claim_and_none_for_other_tokens() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 1_900_000_000}).encode()).decode().rstrip("=")
    assert token_expiry(f"header.{claims}.signature") == datetime.fromtimestamp(1_900_000_000, UTC)
    assert token_expiry("static-token") is None
    assert token_expiry("a.not-base64-json.c") is None
    assert token_expiry(None) is None
