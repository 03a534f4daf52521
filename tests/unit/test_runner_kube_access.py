"""The runner's API credentials in a pod: the service account files, read without the kubernetes package."""

from pathlib import Path

import pytest

from agentrun_runner.kube import KubeError, _in_cluster, _ssl_context

pytestmark = pytest.mark.unit


def service_account(tmp_path: Path, token: str) -> Path:
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "ca.crt").write_text("not read until a request is made\n")
    return tmp_path


def test_in_cluster_access_reads_the_rotated_token_at_each_request(tmp_path: Path) -> None:
    account = service_account(tmp_path, "first-token")
    access = _in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, account)
    assert access.host == "https://10.0.0.1:443"
    assert access.ca_file == str(account / "ca.crt")
    assert access.authorization() == "Bearer first-token"
    (account / "token").write_text("rotated-token")
    assert access.authorization() == "Bearer rotated-token"


def test_in_cluster_access_brackets_an_ipv6_service_address(tmp_path: Path) -> None:
    access = _in_cluster(
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, service_account(tmp_path, "t")
    )
    assert access.host == "https://[fd00::1]:6443"


def test_missing_service_account_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="KUBERNETES_SERVICE_HOST/PORT or the service account token"):
        _in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    with pytest.raises(KubeError, match="in-cluster service account or KUBECONFIG"):
        _in_cluster({}, service_account(tmp_path, "t"))


def test_plain_http_needs_no_tls_context(tmp_path: Path) -> None:
    access = _in_cluster(
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, service_account(tmp_path, "t")
    )
    plain = type(access)(host="http://127.0.0.1:8080", authorization=access.authorization)
    assert _ssl_context(plain) is False
