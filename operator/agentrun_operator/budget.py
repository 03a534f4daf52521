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
knowingly. The Job's ``activeDeadlineSeconds`` is maxExecutionTime plus the operator's grace, the
hard stop behind the runner's own soft deadline.
"""

import dataclasses
import math

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
    deadline_grace_seconds: int

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
    def active_deadline_seconds(self) -> int:
        return self.max_execution_seconds + self.deadline_grace_seconds

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
            active_deadline_seconds=self.active_deadline_seconds,
        )


def tools_offered(spec: AgentRunSpec) -> bool:
    return spec.tools.workspace or spec.tools.http_fetch is not None


def compute_budget(spec: AgentRunSpec, *, deadline_grace_seconds: int) -> BudgetBreakdown:
    return BudgetBreakdown(
        queue_seconds_per_iteration=float(spec.throttle.max_seconds_to_wait_in_queue) if spec.throttle.enabled else 0.0,
        request_seconds_per_iteration=parse_duration(spec.model.request_timeout),
        tool_seconds_per_iteration=parse_duration(spec.tools.call_timeout) if tools_offered(spec) else 0.0,
        iterations=spec.max_iterations,
        max_execution_seconds=math.ceil(parse_duration(spec.max_execution_time)),
        deadline_grace_seconds=deadline_grace_seconds,
    )
