"""The design timeout budget of a run: can its worst case fit maxExecutionTime?

Formula (documented in the status field ``budget.worstCaseSeconds``)::

    per_iteration = (throttle.maxSecondsToWaitInQueue if throttle.enabled else 0) + model.requestTimeout
    tool_time     = maxIterations x tools.callTimeout   when any tool is offered, else 0
    worst_case    = maxIterations x per_iteration + tool_time

Model retries are not multiplied in: a retried call shares its iteration's slot in practice, and
counting ``maxRetries + 1`` full timeouts would warn about nearly every run. Tool time assumes one
tool call per iteration at its full timeout, a fair upper bound for the built-in tools.

The check does not cut anything: a run whose worst case exceeds maxExecutionTime may still finish
in time; the user is told (condition BudgetFits=False and a Warning Event) so the timeout is chosen
knowingly.

The budget is wall clock: it starts when the operator accepts the run (``clockStartTime``) and ends at
``deadline`` = clockStartTime + maxExecutionTime, whatever happened meanwhile (pending, suspended,
runner pods killed, the Job lost and recreated). Every runner pod is told the absolute deadline and
stops itself a margin before it; every Job gets ``activeDeadlineSeconds`` = the budget left when it is
created or resumed, so the hard stop never falls after the deadline; and the operator itself ends the
run TimedOut at the deadline when no runner reports.
"""

import dataclasses
import math
from datetime import datetime, timedelta

from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import Budget
from agentrun_common.durations import parse_duration


@dataclasses.dataclass(frozen=True)
class BudgetBreakdown:
    queue_seconds_per_iteration: float
    request_seconds_per_iteration: float
    tool_seconds_per_iteration: float
    iterations: int
    max_execution_seconds: int
    clock_start: datetime | None = None  # unset until the run is accepted

    @property
    def worst_case_seconds(self) -> int:
        per_iteration = (
            self.queue_seconds_per_iteration + self.request_seconds_per_iteration + self.tool_seconds_per_iteration
        )
        return math.ceil(self.iterations * per_iteration)

    @property
    def fits(self) -> bool:
        return self.worst_case_seconds <= self.max_execution_seconds

    @property
    def deadline(self) -> datetime | None:
        return None if self.clock_start is None else self.deadline_from(self.clock_start)

    def deadline_from(self, clock_start: datetime) -> datetime:
        return clock_start + timedelta(seconds=self.max_execution_seconds)

    def explain(self) -> str:
        """One sentence a user can act on, naming the terms of the sum."""
        terms = [f"queue {self.queue_seconds_per_iteration:g}s", f"request {self.request_seconds_per_iteration:g}s"]
        if self.tool_seconds_per_iteration:
            terms.append(f"tools {self.tool_seconds_per_iteration:g}s")
        worst = f"worst case {self.iterations} x ({' + '.join(terms)}) = {self.worst_case_seconds}s"
        if self.fits:
            return f"{worst} fits maxExecutionTime ({self.max_execution_seconds}s)"
        return (
            f"{worst} exceeds maxExecutionTime ({self.max_execution_seconds}s): raise maxExecutionTime, "
            "or lower maxIterations, model.requestTimeout, throttle.maxSecondsToWaitInQueue or tools.callTimeout"
        )

    def to_status(self) -> Budget:
        return Budget(
            worst_case_seconds=self.worst_case_seconds,
            max_execution_seconds=self.max_execution_seconds,
            fits=self.fits,
            active_deadline_seconds=self.max_execution_seconds,
            clock_start_time=self.clock_start,
            deadline=self.deadline,
        )


def tools_offered(spec: AgentRunSpec) -> bool:
    return spec.tools.workspace or spec.tools.http_fetch is not None


def seconds_left(deadline: datetime, now: datetime) -> int:
    """activeDeadlineSeconds for a Job created or resumed now: the budget left, rounded down so the hard
    stop never falls after the deadline; at least 1, the smallest value the API accepts."""
    return max(1, math.floor((deadline - now).total_seconds()))


def compute_budget(spec: AgentRunSpec, *, clock_start: datetime | None = None) -> BudgetBreakdown:
    return BudgetBreakdown(
        queue_seconds_per_iteration=float(spec.throttle.max_seconds_to_wait_in_queue) if spec.throttle.enabled else 0.0,
        request_seconds_per_iteration=parse_duration(spec.model.request_timeout),
        tool_seconds_per_iteration=parse_duration(spec.tools.call_timeout) if tools_offered(spec) else 0.0,
        iterations=spec.max_iterations,
        max_execution_seconds=math.ceil(parse_duration(spec.max_execution_time)),
        clock_start=clock_start,
    )
