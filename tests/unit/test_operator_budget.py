"""The design timeout budget: worst case against maxExecutionTime, and the Job's hard deadline."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentrun_api.spec import AgentRunSpec
from agentrun_operator.budget import compute_budget, seconds_left
from tests.operator_samples import manifest

pytestmark = pytest.mark.unit


def budget_of(clock_start: datetime | None = None, **overrides: Any):  # type: ignore[no-untyped-def]
    return compute_budget(AgentRunSpec.model_validate(manifest(**overrides)["spec"]), clock_start=clock_start)


def test_unthrottled_run_without_tools_costs_iterations_times_request_timeout() -> None:
    budget = budget_of(maxIterations=10, model={"name": "m", "requestTimeout": "30s"}, tools={"workspace": False})
    assert budget.worst_case_seconds == 300
    assert budget.fits


def test_throttle_wait_and_tool_time_are_added_per_iteration() -> None:
    budget = budget_of(
        maxIterations=10,
        maxExecutionTime="1h",
        model={"name": "m", "requestTimeout": "30s"},
        throttle={"enabled": True, "maxSecondsToWaitInQueue": 60},
        tools={"workspace": True, "callTimeout": "20s"},
    )
    assert budget.worst_case_seconds == 10 * (60 + 30 + 20)
    assert budget.fits


def test_disabled_throttle_costs_no_queue_time() -> None:
    budget = budget_of(
        maxIterations=10,
        model={"name": "m", "requestTimeout": "30s"},
        throttle={"enabled": False, "maxSecondsToWaitInQueue": 600},
        tools={"workspace": False},
    )
    assert budget.worst_case_seconds == 300


def test_worst_case_over_max_execution_time_does_not_fit_and_says_what_to_change() -> None:
    budget = budget_of(maxIterations=100, maxExecutionTime="30m", model={"name": "m", "requestTimeout": "120s"})
    assert budget.worst_case_seconds == 100 * (120 + 60)
    assert not budget.fits
    assert "exceeds maxExecutionTime (1800s)" in budget.explain()
    assert "raise maxExecutionTime" in budget.explain()
    status = budget.to_status()
    assert (status.worst_case_seconds, status.max_execution_seconds, status.fits) == (18000, 1800, False)


def test_the_deadline_is_wall_clock_from_the_clock_start_and_the_first_job_gets_all_of_it() -> None:
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    status = budget_of(clock_start=start, maxExecutionTime="1h30m").to_status()
    assert (status.active_deadline_seconds, status.clock_start_time) == (5400, start)
    assert status.deadline == start + timedelta(minutes=90)
    assert budget_of(maxExecutionTime="1h30m").to_status().deadline is None  # not accepted yet


def test_seconds_left_rounds_down_and_never_goes_below_the_api_minimum() -> None:
    deadline = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert seconds_left(deadline, deadline - timedelta(seconds=59.9)) == 59
    assert seconds_left(deadline, deadline + timedelta(seconds=3)) == 1
