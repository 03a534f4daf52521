"""The platform policy's pure logic: patterns read from the environment, matching, and the messages."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentrun_api.spec import AgentRunSpec
from agentrun_common.settings import SettingsError
from agentrun_operator.children import RunOwner, build_job
from agentrun_operator.policy import Policy, PolicyViolationError, enforce, host_of, repository_of
from agentrun_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

DIGEST = "@sha256:" + "a" * 64


def spec(**fields: Any) -> AgentRunSpec:
    document: dict[str, Any] = {
        "instructions": "i",
        "input": "x",
        "model": {"name": "m", "baseURL": "https://api.openai.com/v1"},
        "maxExecutionTime": "10m",
        "maxIterations": 3,
        **fields,
    }
    return AgentRunSpec.model_validate(document)


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/acme/runner:1.2", "ghcr.io/acme/runner"),
        ("registry.local:5000/team/runner", "registry.local:5000/team/runner"),
        ("registry.local:5000/team/runner:7" + DIGEST, "registry.local:5000/team/runner"),
        ("runner" + DIGEST, "runner"),
    ],
)
def test_repository_of_drops_tag_and_digest_but_keeps_a_registry_port(image: str, repository: str) -> None:
    assert repository_of(image) == repository


def test_unset_variables_allow_anything_so_existing_installs_keep_working() -> None:
    policy = Policy.from_env({})
    assert policy == Policy()
    enforce(
        spec(
            runner={"image": "docker.io/anything:latest"},
            model={"name": "m", "baseURL": "http://10.0.0.1:8000/v1"},
            completionWebhook={"url": "http://10.0.0.2/", "signingKeySecretRef": {"name": "k", "key": "k"}},
        ),
        policy,
    )


def test_image_patterns_exact_and_by_prefix() -> None:
    policy = Policy.from_env({"AGENTRUN_POLICY_ALLOWED_IMAGES": "ghcr.io/acme/*, registry.local:5000/runner"})
    assert policy.image_allowed("ghcr.io/acme/runner:1")
    assert policy.image_allowed("ghcr.io/acme/team/runner" + DIGEST)
    assert policy.image_allowed("registry.local:5000/runner:2")
    assert not policy.image_allowed("registry.local:5000/runner-evil:2")
    assert not policy.image_allowed("ghcr.io/acme-evil/runner:1")
    assert not policy.image_allowed("ghcr.io/acme:1")


def test_an_image_outside_the_policy_is_refused_naming_field_value_and_what_is_allowed() -> None:
    policy = Policy(allowed_images=("ghcr.io/acme/*",))
    enforce(spec(), policy)  # omitting the image is fine: the operator's default runs
    with pytest.raises(PolicyViolationError) as refused:
        enforce(spec(runner={"image": "docker.io/miner:1"}), policy)
    assert str(refused.value).startswith("spec.runner.image: 'docker.io/miner:1' is not allowed")
    assert "ghcr.io/acme/*" in str(refused.value)
    assert refused.value.reason == "PolicyViolation"


def test_a_digest_can_be_required_of_images_runs_choose() -> None:
    policy = Policy(require_image_digest=True)
    enforce(spec(runner={"image": "ghcr.io/acme/runner" + DIGEST}), policy)
    with pytest.raises(PolicyViolationError, match=r"spec\.runner\.image: .* not pinned by digest"):
        enforce(spec(runner={"image": "ghcr.io/acme/runner:1"}), policy)


def test_model_hosts_exact_wildcard_and_ip() -> None:
    policy = Policy.from_env({"AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS": "api.openai.com,*.internal.example,10.0.0.7"})
    assert policy.model_host_allowed("https://API.openai.com/v1")
    assert policy.model_host_allowed("http://vllm.team.internal.example:8000/v1")
    assert policy.model_host_allowed("http://10.0.0.7:8000/v1")
    assert not policy.model_host_allowed("https://internal.example/v1")  # the wildcard is for subdomains
    assert not policy.model_host_allowed("https://api.openai.com.evil.example/v1")
    assert not policy.model_host_allowed("https://evil.example/v1#api.openai.com")
    assert not policy.model_host_allowed("https://api.openai.com@evil.example/v1")
    assert not policy.model_host_allowed("https://evil.example\\@api.openai.com/v1")  # parsers disagree on it


def test_a_model_host_message_names_the_host_never_the_url() -> None:
    policy = Policy(allowed_model_hosts=("api.openai.com",))
    with pytest.raises(PolicyViolationError) as refused:
        enforce(spec(model={"name": "m", "baseURL": "https://u:s3cret@evil.example/v1?key=s3cret2"}), policy)
    message = str(refused.value)
    assert message.startswith("spec.model.baseURL: host 'evil.example' is not an allowed model host")
    assert "api.openai.com" in message
    assert "s3cret" not in message


def test_webhook_hosts_and_an_empty_list_allows_nothing() -> None:
    hook = {"url": "https://hooks.example.com/x", "signingKeySecretRef": {"name": "k", "key": "k"}}
    enforce(spec(completionWebhook=hook), Policy(allowed_webhook_hosts=("hooks.example.com",)))
    closed = Policy.from_env({"AGENTRUN_POLICY_ALLOWED_WEBHOOK_HOSTS": ""})
    assert closed.allowed_webhook_hosts == ()
    with pytest.raises(PolicyViolationError, match=r"spec\.completionWebhook\.url: host 'hooks\.example\.com'.*none"):
        enforce(spec(completionWebhook=hook), closed)


def test_a_url_without_a_clear_host_is_allowed_only_by_a_policy_that_allows_any() -> None:
    assert host_of("http://[::1") == ""
    assert not Policy(allowed_model_hosts=("::1",)).model_host_allowed("http://[::1")
    assert Policy().model_host_allowed("http://[::1")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTRUN_POLICY_ALLOWED_IMAGES", "ghcr.io/acme/**"),
        ("AGENTRUN_POLICY_ALLOWED_IMAGES", "ghcr.io/acme/runner:1.2"),
        ("AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS", "https://api.openai.com"),
        ("AGENTRUN_POLICY_ALLOWED_WEBHOOK_HOSTS", "hooks.*.example.com"),
        ("AGENTRUN_POLICY_REQUIRE_IMAGE_DIGEST", "yes"),
    ],
)
def test_a_malformed_policy_variable_stops_the_operator_naming_it(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        OperatorSettings.from_env({variable: value})


def test_settings_read_the_policy_and_refuse_a_default_image_it_does_not_allow() -> None:
    settings = OperatorSettings.from_env(
        {
            "AGENTRUN_RUNNER_IMAGE": "ghcr.io/acme/runner:2",
            "AGENTRUN_POLICY_ALLOWED_IMAGES": "ghcr.io/acme/*",
            "AGENTRUN_POLICY_REQUIRE_IMAGE_DIGEST": "true",
            "AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS": "api.openai.com",
        }
    )
    assert settings.policy == Policy(
        allowed_images=("ghcr.io/acme/*",),
        require_image_digest=True,
        allowed_model_hosts=("api.openai.com",),
    )
    with pytest.raises(SettingsError, match=r"AGENTRUN_RUNNER_IMAGE 'ghcr\.io/other/runner:2' is not among"):
        OperatorSettings.from_env(
            {"AGENTRUN_RUNNER_IMAGE": "ghcr.io/other/runner:2", "AGENTRUN_POLICY_ALLOWED_IMAGES": "ghcr.io/acme/*"}
        )


NOW = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = NOW + timedelta(minutes=30)


def test_default_runner_resources_apply_only_to_runs_that_set_none() -> None:
    default = '{"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}'
    settings = OperatorSettings.from_env({"AGENTRUN_POLICY_DEFAULT_RUNNER_RESOURCES": default})
    owner = RunOwner(namespace="team-a", name="q3", uid="u")

    def container_resources(run: AgentRunSpec) -> Any:
        (container,) = build_job(owner, run, settings, deadline=DEADLINE, now=NOW)["spec"]["template"]["spec"][
            "containers"
        ]
        return container.get("resources")

    assert container_resources(spec()) == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    # A run's own values win whole: mixed with the default's request, its 256Mi limit would be below 512Mi.
    own = spec(runner={"resources": {"limits": {"memory": "256Mi"}}})
    assert container_resources(own) == {"limits": {"memory": "256Mi"}}
    assert (
        "resources"
        not in build_job(owner, spec(), OperatorSettings(), deadline=DEADLINE, now=NOW)["spec"]["template"]["spec"][
            "containers"
        ][0]
    )


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("{not json", "Expecting property name"),
        ('{"requests": {"cpu": "lots"}}', "requests.cpu"),
        ('{"requests": {}, "limitz": {}}', "limitz"),
    ],
)
def test_malformed_default_runner_resources_stop_the_operator_naming_the_variable(value: str, named: str) -> None:
    with pytest.raises(SettingsError, match="AGENTRUN_POLICY_DEFAULT_RUNNER_RESOURCES") as refused:
        OperatorSettings.from_env({"AGENTRUN_POLICY_DEFAULT_RUNNER_RESOURCES": value})
    assert named in str(refused.value)
