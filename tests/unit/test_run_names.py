"""The AgentRun name rule: every child of a run with the longest allowed name gets a valid name."""

import re
from datetime import UTC, datetime

import pytest

from agentrun_api import contract, names
from agentrun_api.crd import build_crd
from agentrun_api.spec import AgentRunSpec
from agentrun_operator import children
from agentrun_operator.settings import OperatorSettings

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _spec() -> AgentRunSpec:
    return AgentRunSpec.model_validate(
        {
            "instructions": "i",
            "input": "x",
            "model": {"name": "m"},
            "maxExecutionTime": "30m",
            "maxIterations": 5,
            "checkpoint": {"store": "PersistentVolumeClaim"},
        }
    )


def test_every_child_of_a_longest_name_run_has_a_valid_name_and_label() -> None:
    run = "a" * names.RUN_NAME_MAX_LENGTH
    assert names.run_name_problem(run) is None
    owner = children.RunOwner(namespace="ns", name=run, uid="u")
    objects = children.build_children(
        owner, _spec(), OperatorSettings(), stream_token="t", permit_key="k", deadline=_NOW, now=_NOW
    )
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 253
        assert DNS_1123_SUBDOMAIN.match(name), name
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())
    assert len(children.job_name(run)) <= 63  # the Job controller's job-name label on its pods
    assert DNS_1035_LABEL.match(children.stream_service_name(run))
    assert len(children.stream_service_name(run)) <= 63
    assert len(contract.checkpoint_segment_name(run, contract.CONFIGMAP_MAX_SEGMENTS - 1)) <= 253


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("q3.v2", "DNS-1035 label"),
        ("Q3", "DNS-1035 label"),
        ("3q", "DNS-1035 label"),
        ("a" * (names.RUN_NAME_MAX_LENGTH + 1), f"at most {names.RUN_NAME_MAX_LENGTH} characters"),
    ],
)
def test_names_the_operator_cannot_admit_are_explained(name: str, words: str) -> None:
    problem = names.run_name_problem(name)
    assert problem is not None
    assert words in problem
    assert "metadata.name" in problem


def test_the_crd_carries_the_rule_on_metadata_name() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [rule["rule"] for rule in schema["x-kubernetes-validations"]]
    assert rules == [
        f"self.metadata.name.matches('{names.RUN_NAME_PATTERN}')",
        f"size(self.metadata.name) <= {names.RUN_NAME_MAX_LENGTH}",
    ]


@pytest.mark.parametrize(
    ("text", "label", "subdomain"),
    [
        ("team-a", True, True),
        ("a" * 63, True, True),
        ("a" * 64, False, True),
        ("run.v2", False, True),
        ("-team", False, False),
        ("team-", False, False),
        ("Team", False, False),
        ("a..b", False, False),
        ("team\n", False, False),
        ("", False, False),
        ("a" * 254, False, False),
    ],
)
def test_kubernetes_name_forms(text: str, label: bool, subdomain: bool) -> None:
    assert names.is_dns_label(text) is label
    assert names.is_dns_subdomain(text) is subdomain
