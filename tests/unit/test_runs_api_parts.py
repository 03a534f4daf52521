"""The runs API's pure parts: API key form and hash check, run names from idempotency keys, request hashes,
the per-caller rate limit, and the override paths a request may name."""

import base64
from pathlib import Path

import pytest
import yaml

from agentrun_api import names, template
from agentrun_gateway import api_keys, idempotency, run_templates
from agentrun_gateway.rate_limit import CallerRateLimit
from agentrun_gateway.refusals import RefusalError


def _data(namespace: str, digest: str) -> dict[str, str]:
    return {
        api_keys.NAMESPACE_KEY: base64.b64encode(namespace.encode()).decode(),
        api_keys.HASH_KEY: base64.b64encode(digest.encode()).decode(),
    }


def test_an_api_key_is_valid_only_against_its_own_hash() -> None:
    key, presented = api_keys.new_key()
    assert api_keys.parse(key) == presented
    assert presented.secret_name.startswith(api_keys.SECRET_NAME_PREFIX)
    assert api_keys.bound_namespace(presented, _data("team-a", presented.digest)) == "team-a"
    _, other = api_keys.new_key()
    assert api_keys.bound_namespace(presented, _data("team-a", other.digest)) is None
    secret = api_keys.key_secret(presented, "agentrun-system", "team-a")
    assert key not in str(secret)  # only the hash is stored


@pytest.mark.parametrize("text", ["", "eyJhbGciOi.a.b", "ark_short_x", "ark_abcdefgh_" + "x" * 5])
def test_what_is_not_an_api_key_is_taken_for_a_kubernetes_token(text: str) -> None:
    assert api_keys.parse(text) is None


def test_run_names_follow_the_key_and_the_caller_and_are_valid_agentrun_names() -> None:
    name = idempotency.run_name("team-a", "apikey:1", "order-1")
    assert name == idempotency.run_name("team-a", "apikey:1", "order-1")
    assert name != idempotency.run_name("team-a", "apikey:2", "order-1")
    assert name != idempotency.run_name("team-b", "apikey:1", "order-1")
    assert idempotency.run_name("team-a", "apikey:1", None) != idempotency.run_name("team-a", "apikey:1", None)
    assert names.run_name_problem(name) is None


def test_a_request_hash_ignores_key_order_only() -> None:
    assert idempotency.request_digest({"a": 1, "b": [1, 2]}) == idempotency.request_digest({"b": [1, 2], "a": 1})
    assert idempotency.request_digest({"a": 1}) != idempotency.request_digest({"a": 2})


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_a_malformed_idempotency_key_is_refused_naming_the_header(key: str) -> None:
    with pytest.raises(RefusalError) as refused:
        idempotency.check_key(key)
    assert refused.value.field == "header Idempotency-Key"


def test_the_rate_limit_allows_a_burst_then_the_pace_and_refunds() -> None:
    limit = CallerRateLimit(per_minute=60, burst=2)
    assert limit.reserve("a") is None
    assert limit.reserve("a") is None
    wait = limit.reserve("a")
    assert wait is not None
    assert 0 < wait <= 1.0
    assert limit.reserve("b") is None  # callers do not share a bucket
    limit.refund("a")
    assert limit.reserve("a") is None


def test_overrides_nested_or_dotted_name_the_same_paths() -> None:
    assert run_templates._flat({"model": {"temperature": 0.2}, "maxIterations": 3}) == {
        "model.temperature": 0.2,
        "maxIterations": 3,
    }
    assert set(template.OVERRIDES) >= {"model.temperature", "maxIterations"}


def test_the_template_example_is_a_valid_template() -> None:
    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agentruntemplate.yaml").read_text())
    assert manifest["kind"] == template.KIND
    spec = template.AgentRunTemplateSpec.model_validate(manifest["spec"])
    assert set(spec.allowed_overrides) <= set(template.OVERRIDES)
