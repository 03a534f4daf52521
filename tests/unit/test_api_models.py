"""The pydantic models: they refuse what admission refuses, and their helpers keep their promises."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import TERMINAL_PHASES, IllegalTransitionError, Phase, next_phase
from tests.unit.example_manifests import BadExample, agentrun_examples, bad_examples, load

pytestmark = pytest.mark.unit


def pydantic_errors(error: ValidationError) -> list[str]:
    """Each error as "loc: message", loc in the wire's camelCase, as the operator reports it."""
    return [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()]


@pytest.mark.parametrize("path", agentrun_examples(), ids=lambda p: p.stem)
def test_the_model_accepts_every_example_spec_as_written(path: Path) -> None:
    spec = AgentRunSpec.model_validate(load(path)["spec"])
    assert spec.max_iterations == load(path)["spec"]["maxIterations"]


@pytest.mark.parametrize("bad", bad_examples(), ids=lambda b: b.id)
def test_the_model_refuses_every_bad_example_naming_the_field(bad: BadExample) -> None:
    with pytest.raises(ValidationError) as caught:
        AgentRunSpec.model_validate(bad.manifest["spec"])

    rendered = pydantic_errors(caught.value)
    assert any(bad.model_error in line for line in rendered), rendered


@pytest.mark.parametrize("ended", sorted(TERMINAL_PHASES))
@pytest.mark.parametrize("desired", list(Phase))
def test_next_phase_keeps_an_ended_run_ended(ended: Phase, desired: Phase) -> None:
    if desired == ended:
        assert next_phase(ended, desired) is ended
    else:
        with pytest.raises(IllegalTransitionError, match=f"already ended as {ended.value}"):
            next_phase(ended, desired)


@pytest.mark.parametrize("current", [None, *sorted(set(Phase) - TERMINAL_PHASES)])
@pytest.mark.parametrize("desired", list(Phase))
def test_next_phase_lets_a_live_run_move_anywhere(current: Phase | None, desired: Phase) -> None:
    assert next_phase(current, desired) is desired


def test_a_run_names_a_cluster_pool_or_a_namespaced_pool_not_both() -> None:
    base = {"instructions": "x", "input": "y", "model": {"name": "m"}, "maxExecutionTime": "5m", "maxIterations": 1}
    spec = AgentRunSpec.model_validate({**base, "throttle": {"enabled": True, "clusterPool": "org"}})
    assert spec.throttle.cluster_pool == "org"
    with pytest.raises(ValidationError, match=r"either throttle\.pool or throttle\.clusterPool"):
        AgentRunSpec.model_validate({**base, "throttle": {"enabled": True, "pool": "team", "clusterPool": "org"}})
