"""The manifests under examples/: one per feature, one per common mistake, each a single YAML document.

What the API server makes of them is tested on the real one (tests/integration/test_crd_admission.py), what the
models make of them in tests/unit/test_api_models.py."""

import pytest
import yaml

from tests.unit.example_manifests import EXAMPLES_DIR, agentrun_examples, bad_examples, load

pytestmark = pytest.mark.unit


def test_examples_cover_each_feature_and_the_secret_holds_only_a_placeholder() -> None:
    names = {p.stem for p in agentrun_examples()}
    assert names == {"minimal", "throttled", "pvc-checkpoints", "streaming-ingress", "suspended"}
    secret = load(EXAMPLES_DIR / "secret.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "openai-api-key"
    assert secret["stringData"] == {"api-key": "sk-replace-me"}


def test_bad_examples_cover_the_mistakes_users_make() -> None:
    assert {b.id for b in bad_examples()} == {
        "wrong-type",
        "negative-time",
        "unknown-field",
        "zero-iterations",
        "long-model-name",
        "size-with-configmap-store",
        "output-over-token-budget",
    }


def test_the_committed_examples_parse_as_yaml_documents() -> None:
    for path in EXAMPLES_DIR.rglob("*.yaml"):
        assert len(list(yaml.safe_load_all(path.read_text()))) == 1, path
