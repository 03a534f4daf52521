"""Replicas coordinate through kopf peering when the chart names a peering object."""

import kopf
import pytest

from agentrun_operator.peering import configure_peering
from agentrun_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit


def test_without_a_peering_object_the_operator_runs_standalone():
    settings = kopf.OperatorSettings()
    configure_peering(settings, OperatorSettings.from_env({}))
    assert settings.peering.standalone is True


def test_a_named_peering_object_makes_replicas_peer_with_distinct_priorities():
    config = OperatorSettings.from_env({"AGENTRUN_PEERING_NAME": "agentrun-operator"})
    replicas = [kopf.OperatorSettings() for _ in range(5)]
    for settings in replicas:
        configure_peering(settings, config)
    assert all(s.peering.standalone is False and s.peering.mandatory is True for s in replicas)
    assert {s.peering.name for s in replicas} == {"agentrun-operator"}
    # Equal priorities freeze every replica in kopf; each process draws its own.
    assert len({s.peering.priority for s in replicas}) == len(replicas)
    assert all(s.peering.priority > 0 for s in replicas)
