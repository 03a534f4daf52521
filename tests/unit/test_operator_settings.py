"""OperatorSettings from environment variables: defaults, parsing and errors that name the variable."""

import pytest

from agentrun_common.settings import SettingsError
from agentrun_operator.settings import DEFAULT_RUNNER_IMAGE, OperatorSettings

pytestmark = pytest.mark.unit


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.runner_image == DEFAULT_RUNNER_IMAGE
    assert (settings.status_min_interval_seconds, settings.progress_interval_seconds) == (2.0, 2.0)
    assert (settings.metrics_port, settings.health_port) == (8000, 8081)
    assert settings.namespaces == []


def test_every_named_variable_is_read() -> None:
    settings = OperatorSettings.from_env(
        {
            "AGENTRUN_WATCH_NAMESPACE": "agents",
            "AGENTRUN_RUNNER_IMAGE": "registry.example/runner:2",
            "AGENTRUN_STATUS_MIN_INTERVAL_SECONDS": "0.5",
            "AGENTRUN_PROGRESS_INTERVAL_SECONDS": "1",
            "AGENTRUN_METRICS_PORT": "9100",
            "AGENTRUN_HEALTH_PORT": "0",
            "AGENTRUN_LOG_FORMAT": "JSON",
            "AGENTRUN_STREAM_BASE_URL": "https://agents.example.com/",
            "AGENTRUN_STREAM_CONTROLLER": "gke-ingress",
        }
    )
    assert settings.namespaces == ["agents"]
    assert settings.runner_image == "registry.example/runner:2"
    assert settings.status_min_interval_seconds == 0.5
    assert settings.progress_interval_seconds == 1.0
    assert (settings.metrics_port, settings.health_port) == (9100, 0)
    assert settings.log_format == "json"
    assert settings.stream_base_url == "https://agents.example.com"
    assert settings.stream_controller == "gke-ingress"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTRUN_STATUS_MIN_INTERVAL_SECONDS", "fast"),
        ("AGENTRUN_PROGRESS_INTERVAL_SECONDS", "0"),
        ("AGENTRUN_METRICS_PORT", "70000"),
        ("AGENTRUN_HEALTH_PORT", "-1"),
        ("AGENTRUN_LOG_FORMAT", "xml"),
        ("AGENTRUN_STREAM_CONTROLLER", "nginx"),
        ("AGENTRUN_GATEWAY_SERVICE_ACCOUNT", "agentrun-stream-gateway"),
        ("AGENTRUN_GATEWAY_SERVICE_ACCOUNT", "agentrun-system/"),
        ("AGENTRUN_GATEWAY_SERVICE_ACCOUNT", "a/b/c"),
    ],
)
def test_bad_values_are_rejected_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def test_permit_server_settings_are_read_with_the_operators() -> None:
    settings = OperatorSettings.from_env(
        {
            "AGENTRUN_PERMIT_SERVER_URL": "http://agentrun-permits.agentrun-system:8090/",
            "AGENTRUN_PERMIT_PORT": "9090",
            "AGENTRUN_PERMIT_LEASE_SECONDS": "5",
        }
    )
    assert settings.permit_server_url == "http://agentrun-permits.agentrun-system:8090"
    assert (settings.permits.port, settings.permits.lease_seconds) == (9090, 5.0)
    assert OperatorSettings.from_env({}).permit_server_url == ""


@pytest.mark.parametrize(("name", "value"), [("AGENTRUN_PERMIT_PORT", "http"), ("AGENTRUN_PERMIT_LEASE_SECONDS", "0")])
def test_bad_permit_settings_are_operator_settings_errors(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def test_leader_election_is_read_from_the_lease_name_and_the_downward_api() -> None:
    settings = OperatorSettings.from_env(
        {
            "AGENTRUN_LEADER_ELECTION_LEASE": "agentrun-operator",
            "POD_NAME": "agentrun-operator-7d9f-abcde",
            "POD_NAMESPACE": "agentrun-system",
            "AGENTRUN_LEASE_DURATION_SECONDS": "20",
            "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS": "12",
            "AGENTRUN_LEASE_RETRY_PERIOD_SECONDS": "3",
            "AGENTRUN_MAX_CONCURRENT_ADMISSIONS": "8",
        }
    )
    election = settings.leader_election
    assert election.enabled
    assert (election.lease_name, election.namespace) == ("agentrun-operator", "agentrun-system")
    assert (election.identity, election.pod_name, election.pod_namespace) == (
        "agentrun-operator-7d9f-abcde",
        "agentrun-operator-7d9f-abcde",
        "agentrun-system",
    )
    assert (election.lease_duration_seconds, election.renew_deadline_seconds, election.retry_period_seconds) == (
        20.0,
        12.0,
        3.0,
    )
    assert settings.max_concurrent_admissions == 8


def test_without_a_lease_the_operator_is_a_single_replica_leading_from_the_start() -> None:
    assert not OperatorSettings.from_env({}).leader_election.enabled


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # The leader must stop before its Lease could expire: renew deadline below the duration.
        (
            {"AGENTRUN_LEASE_DURATION_SECONDS": "10", "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS": "10"},
            "AGENTRUN_LEASE_RENEW_DEADLINE_SECONDS",
        ),
        ({"AGENTRUN_LEASE_RETRY_PERIOD_SECONDS": "soon"}, "AGENTRUN_LEASE_RETRY_PERIOD_SECONDS"),
        ({"AGENTRUN_LEADER_ELECTION_LEASE": "agentrun-operator"}, "AGENTRUN_LEADER_ELECTION_NAMESPACE"),
        ({"AGENTRUN_MAX_CONCURRENT_ADMISSIONS": "0"}, "AGENTRUN_MAX_CONCURRENT_ADMISSIONS"),
    ],
)
def test_bad_leader_election_settings_are_rejected_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        OperatorSettings.from_env(env)


def test_the_gateway_service_account_is_read_as_namespace_and_name() -> None:
    env = {"AGENTRUN_GATEWAY_SERVICE_ACCOUNT": " agentrun-system/agentrun-stream-gateway "}
    assert OperatorSettings.from_env(env).gateway_service_account == "agentrun-system/agentrun-stream-gateway"
    assert OperatorSettings.from_env({}).gateway_service_account == ""


def test_seconds_may_be_durations_and_blank_variables_keep_the_defaults() -> None:
    settings = OperatorSettings.from_env(
        {
            "AGENTRUN_SUPERVISE_INTERVAL_SECONDS": "1m",
            "AGENTRUN_PREREQUISITE_GRACE_SECONDS": "1m30s",
            "AGENTRUN_PERMIT_LEASE_SECONDS": "20s",
            "AGENTRUN_LEASE_DURATION_SECONDS": "30s",
            "AGENTRUN_METRICS_PORT": "",
            "AGENTRUN_RUNNER_IMAGE": " ",
        }
    )
    assert (settings.supervise_interval_seconds, settings.prerequisite_grace_seconds) == (60.0, 90.0)
    assert (settings.permits.lease_seconds, settings.leader_election.lease_duration_seconds) == (20.0, 30.0)
    assert (settings.metrics_port, settings.runner_image) == (8000, DEFAULT_RUNNER_IMAGE)


def test_the_lease_namespace_variable_wins_over_the_pods_namespace() -> None:
    settings = OperatorSettings.from_env(
        {
            "AGENTRUN_LEADER_ELECTION_LEASE": "agentrun-operator",
            "AGENTRUN_LEADER_ELECTION_NAMESPACE": "leases",
            "POD_NAMESPACE": "agentrun-system",
        }
    )
    assert (settings.leader_election.namespace, settings.leader_election.pod_namespace) == ("leases", "agentrun-system")


def test_the_servers_bind_the_pods_ip_unless_told_otherwise() -> None:
    assert OperatorSettings.from_env({}).listen_host == "0.0.0.0"
    on_pod = OperatorSettings.from_env({"POD_IP": "10.1.2.3"})
    assert (on_pod.listen_host, on_pod.permits.host) == ("10.1.2.3", "10.1.2.3")
    told = OperatorSettings.from_env({"POD_IP": "10.1.2.3", "AGENTRUN_LISTEN_HOST": "127.0.0.1"})
    assert (told.listen_host, told.permits.host) == ("127.0.0.1", "10.1.2.3")


def test_runner_image_pull_secrets_are_comma_separated_secret_names_each_once() -> None:
    env = {"AGENTRUN_RUNNER_IMAGE_PULL_SECRETS": " regcred, team.registry ,regcred,"}
    assert OperatorSettings.from_env(env).runner_image_pull_secrets == ("regcred", "team.registry")
    assert OperatorSettings.from_env({}).runner_image_pull_secrets == ()


def test_a_runner_image_pull_secret_that_is_no_secret_name_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"AGENTRUN_RUNNER_IMAGE_PULL_SECRETS: 'Reg_Cred' is not a Secret name"):
        OperatorSettings.from_env({"AGENTRUN_RUNNER_IMAGE_PULL_SECRETS": "regcred,Reg_Cred"})
