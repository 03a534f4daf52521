"""The local executor's Job controller and kubelet rules, as pure functions."""

import pytest

from tests.harness.executor.jobs import evaluate_pod_failure_policy, set_condition, success_reached, wanted_active
from tests.harness.nodeagent.containers import expand
from tests.harness.nodeagent.pods import exit_code_of

pytestmark = pytest.mark.unit


def failed_pod(exit_code: int, *, container: str = "main", conditions: list | None = None) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "status": {
            "phase": "Failed",
            "conditions": conditions or [],
            "containerStatuses": [{"name": container, "state": {"terminated": {"exitCode": exit_code}}}],
        },
    }


def job_with(rules: list) -> dict:
    return {"metadata": {"name": "j"}, "spec": {"podFailurePolicy": {"rules": rules}}}


FAIL_ON_3 = {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}
IGNORE_DISRUPTION = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_fail_job_rule_matches_a_listed_exit_code_of_the_named_container():
    verdict = evaluate_pod_failure_policy(job_with([FAIL_ON_3]), failed_pod(3))
    assert verdict.action == "FailJob"
    assert verdict.message == "Container main for pod ns/p failed with exit code 3 matching FailJob rule at index 0"


def test_exit_code_rule_ignores_other_codes_and_other_containers():
    assert evaluate_pod_failure_policy(job_with([FAIL_ON_3]), failed_pod(1)).action == "Count"
    assert evaluate_pod_failure_policy(job_with([FAIL_ON_3]), failed_pod(3, container="sidecar")).action == "Count"


def test_not_in_operator_matches_codes_outside_the_list_but_never_zero():
    rule = {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}}
    assert evaluate_pod_failure_policy(job_with([rule]), failed_pod(2)).action == "FailJob"
    assert evaluate_pod_failure_policy(job_with([rule]), failed_pod(1)).action == "Count"
    assert evaluate_pod_failure_policy(job_with([rule]), failed_pod(0)).action == "Count"


def test_pod_condition_rule_matches_only_a_true_condition_and_first_rule_wins():
    evicted = failed_pod(143, conditions=[{"type": "DisruptionTarget", "status": "True"}])
    not_evicted = failed_pod(143, conditions=[{"type": "DisruptionTarget", "status": "False"}])
    catch_all = {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}}
    assert evaluate_pod_failure_policy(job_with([IGNORE_DISRUPTION, catch_all]), evicted).action == "Ignore"
    assert evaluate_pod_failure_policy(job_with([IGNORE_DISRUPTION, catch_all]), not_evicted).action == "FailJob"
    assert evaluate_pod_failure_policy(job_with([catch_all, IGNORE_DISRUPTION]), evicted).action == "FailJob"


def test_set_condition_keeps_transition_time_while_status_is_unchanged():
    old = {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": "t0"}
    same = {**old, "lastTransitionTime": "t1"}
    flipped = {"type": "Suspended", "status": "False", "reason": "JobResumed", "lastTransitionTime": "t2"}
    assert set_condition([old], same) == [old]
    assert set_condition([old], flipped) == [flipped]
    assert set_condition([], flipped) == [flipped]


def test_wanted_pods_follow_parallelism_and_remaining_completions():
    assert wanted_active({"spec": {}}, succeeded=0) == 1  # both unset: completions and parallelism 1
    assert wanted_active({"spec": {}}, succeeded=1) == 0
    assert wanted_active({"spec": {"completions": 5, "parallelism": 2}}, succeeded=4) == 1
    assert wanted_active({"spec": {"parallelism": 3}}, succeeded=0) == 3  # work queue
    assert wanted_active({"spec": {"parallelism": 3}}, succeeded=1) == 0


def test_success_needs_all_completions_or_for_work_queues_one_success_and_no_active_pod():
    assert success_reached({"spec": {"completions": 2}}, succeeded=2, active=0)
    assert not success_reached({"spec": {"completions": 2}}, succeeded=1, active=0)
    assert not success_reached({"spec": {"parallelism": 2}}, succeeded=1, active=1)
    assert success_reached({"spec": {"parallelism": 2}}, succeeded=1, active=0)


def test_variable_references_expand_like_kubelet():
    env = {"A": "x", "B": "y"}
    assert expand("$(A)/$(B)", env) == "x/y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"


def test_signal_deaths_become_128_plus_the_signal():
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143
    assert exit_code_of(3) == 3
