"""The agent loop: model call, tool calls, checkpoint, repeat, until an outcome.

Every step is checkpointed (after each model answer and each tool result), so a replaced pod
resumes at the step it was on; a tool call already in the log is not run again. Events between
steps (streamed tokens) are written within ``event_flush_seconds``; readers see only written events. Limits end the run
with their own outcome: iterations, the wall-clock budget (counted across restarts), the token
budget, the throttle queue wait, and model errors.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentrun_api.contract import ApprovalRequest, Outcome, ProgressReport, ResultRef, RunnerConfig
from agentrun_api.status import CheckpointInfo, QueueWait, Usage
from agentrun_common.durations import parse_duration
from agentrun_runner.approvals import ApprovalRequiredError, CallDeniedError
from agentrun_runner.checkpoint import CheckpointError, CheckpointStore
from agentrun_runner.events import EventLog
from agentrun_runner.model import (
    BudgetExhaustedError,
    ModelClient,
    ModelFailedError,
    ModelRejectedError,
    ThrottleTimeoutError,
)
from agentrun_runner.progress import ProgressReporter
from agentrun_runner.state import Message, RunState, ToolCallRecord
from agentrun_runner.tools import Toolbox, ToolError

# Largest share of maxExecutionTime the soft-deadline margin may take.
MAX_MARGIN_SHARE = 0.25
log = logging.getLogger(__name__)

SUMMARY_CHARS = 2048
MESSAGE_CHARS = 1024
EVENT_OUTPUT_CHARS = 4096  # a tool output in a stream event is a preview; the model sees the whole


@dataclass(frozen=True)
class RunEnd:
    outcome: Outcome
    message: str
    result: str | None = None


@dataclass(frozen=True)
class AwaitingApproval:
    """The run stopped, checkpointed, at calls that wait for a person's decision (not an outcome)."""

    requests: list[ApprovalRequest]


class _AwaitingApprovalError(Exception):
    def __init__(self, requests: list[ApprovalRequest]) -> None:
        super().__init__(f"{len(requests)} call(s) wait for approval")
        self.requests = requests


def _log_failure(future: "asyncio.Future[None]") -> None:
    if not future.cancelled() and future.exception() is not None:
        # The loop's own next checkpoint fails the same way and ends the run with CheckpointError.
        log.error("checkpoint of pending events failed: %s", future.exception())


class Clock:
    """Execution time used by the run: what earlier pods used plus this pod's time."""

    def __init__(self, used_before: float) -> None:
        self._used_before = used_before
        self._started = time.monotonic()

    def elapsed(self) -> float:
        return self._used_before + time.monotonic() - self._started


class Agent:
    def __init__(
        self,
        config: RunnerConfig,
        *,
        state: RunState,
        events: EventLog,
        store: CheckpointStore,
        reporter: ProgressReporter,
        model: ModelClient,
        toolbox: Toolbox,
        pod: str,
        resumed_from_iteration: int | None,
        event_flush_seconds: float = 0.2,
        deadline: datetime | None = None,
    ) -> None:
        """``deadline`` is the run's absolute deadline from the operator (wall clock across restarts); a
        runner started without one (outside a cluster) counts maxExecutionTime from its checkpoint."""
        self._config = config
        self._spec = config.spec
        self.state = state
        self.events = events
        self._store = store
        self._reporter = reporter
        self._model = model
        self._toolbox = toolbox
        self._pod = pod
        self._resumed_from = resumed_from_iteration
        self.clock = Clock(state.counters.elapsed_seconds)
        budget = parse_duration(self._spec.max_execution_time)
        # The margin leaves time to checkpoint and report before the budget is gone; a short run keeps
        # three quarters of its budget for work instead of timing out before its first call.
        margin = min(config.soft_deadline_margin_seconds, budget * MAX_MARGIN_SHARE)
        left = (deadline - datetime.now(UTC)).total_seconds() if deadline is not None else budget - self.clock.elapsed()
        # Read the wall clock once, then count on the monotonic clock, which no clock step moves.
        self._soft_deadline = time.monotonic() + left - margin
        self._call_timeout = parse_duration(self._spec.tools.call_timeout)
        self._checkpoint_lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None
        self._flush_after = event_flush_seconds
        self._flushing: asyncio.Future[None] | None = None
        self._last_checkpoint: CheckpointInfo | None = None
        self._message = ""
        self._awaiting: list[ApprovalRequest] = []  # reported once the run stopped for them, never before
        self._needing_approval: list[ApprovalRequest] = []  # collected while one step's calls run
        if state.counters.started_at is None:
            state.counters.started_at = datetime.now(UTC).isoformat()

    def remaining(self) -> float:
        return self._soft_deadline - time.monotonic()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> RunEnd | AwaitingApproval:
        """Run to an outcome and record it (result first, then the outcome); or stop at calls that wait for
        approval, checkpointed and reported."""
        self.events.on_pending = self._schedule_flush
        if not self.state.messages:
            self.state.messages = [
                {"role": "system", "content": self._spec.instructions},
                {"role": "user", "content": self._spec.input},
            ]
        try:
            # Persist this pod's start before anything is shown.
            await self.checkpoint()
            end = await self._loop()
        except CheckpointError as error:
            end = RunEnd(Outcome.CHECKPOINT_ERROR, str(error))
        except _AwaitingApprovalError as waiting:
            try:
                await self._stop_for_approval(waiting.requests)
                return AwaitingApproval(waiting.requests)
            except CheckpointError as error:
                end = RunEnd(Outcome.CHECKPOINT_ERROR, str(error))
        await self._finish(end)
        return end

    async def _loop(self) -> RunEnd:
        state = self.state
        while True:
            last = state.messages[-1]
            if last["role"] == "assistant":
                if not last.get("tool_calls"):
                    return RunEnd(Outcome.SUCCEEDED, "the agent gave its final answer", last.get("content") or "")
                if not await self._run_tools(last):
                    return self._timed_out("during tool calls")
                continue
            limit = self._limit_reached()
            if limit is not None:
                return limit
            try:
                await self._model_step()
            except ModelRejectedError as error:
                return RunEnd(Outcome.MODEL_REJECTED, str(error))
            except ModelFailedError as error:
                return RunEnd(Outcome.MODEL_FAILED, str(error))
            except ThrottleTimeoutError as error:
                return RunEnd(Outcome.THROTTLE_QUEUE_TIMEOUT, str(error))
            except BudgetExhaustedError as error:
                return self._timed_out(str(error))

    def _limit_reached(self) -> RunEnd | None:
        counters = self.state.counters
        budget = self._spec.token_budget
        if budget is not None and counters.total_tokens >= budget:
            return RunEnd(
                Outcome.TOKEN_BUDGET_EXCEEDED,
                f"used {counters.total_tokens} tokens of the tokenBudget of {budget} before finishing",
            )
        if counters.step >= self._spec.max_iterations:
            return RunEnd(
                Outcome.MAX_ITERATIONS, f"reached maxIterations ({self._spec.max_iterations}) without a final answer"
            )
        if self.remaining() <= 0:
            return self._timed_out("before a model call")
        return None

    def _timed_out(self, when: str) -> RunEnd:
        return RunEnd(
            Outcome.TIMED_OUT,
            f"maxExecutionTime ({self._spec.max_execution_time}) ran out {when} after "
            f"{self.clock.elapsed():.1f}s of execution, at iteration {self.state.counters.step}",
        )

    async def _model_step(self) -> None:
        counters = self.state.counters
        iteration = counters.step + 1
        streamed = self._count_interrupted_call(iteration)
        retry = streamed is not None
        self.events.emit(
            "iteration",
            {"iteration": iteration, "maxIterations": self._spec.max_iterations} | ({"retry": True} if retry else {}),
        )
        if retry:
            self._progress(
                f"iteration {iteration}: calling the model again; the call a lost pod had in flight is counted in "
                f"usage ({streamed} streamed tokens, its prompt as this call's)"
            )
        else:
            self._progress(f"iteration {iteration}: calling the model")
        # Sent at once without a throttle; with one, once a permit came (_note_queue_wait).
        counters.call_in_flight = 0 if self._spec.throttle.enabled else iteration

        def on_token(text: str) -> None:
            self.events.emit("token", {"iteration": iteration, "text": text})

        max_completion_tokens = self._spec.model.max_output_tokens
        if self._spec.token_budget is not None:
            left = self._spec.token_budget - counters.total_tokens
            max_completion_tokens = left if max_completion_tokens is None else min(max_completion_tokens, left)
        answer = await self._model.complete(
            self.state.messages,
            self._toolbox.definitions(),
            remaining=self.remaining,
            on_token=on_token if self._spec.model.stream else None,
            on_queue_wait=self._note_queue_wait,
            max_completion_tokens=max_completion_tokens,
        )
        counters.step = iteration
        counters.call_in_flight = 0
        # The prompts of interrupted attempts were these messages too: priced as this one.
        counters.prompt_tokens += answer.prompt_tokens * (1 + counters.unbilled_prompts)
        counters.unbilled_prompts = 0
        counters.completion_tokens += answer.completion_tokens
        self.state.messages.append(answer.message)
        await self.checkpoint()

    def _count_interrupted_call(self, iteration: int) -> int | None:
        """Count a call of this iteration that a lost pod had in flight; its streamed tokens, or None.

        The log says the call was sent and not answered: the provider got the prompt and may have
        streamed part of an answer. Counted: the streamed tokens the log holds (one a chunk), and the
        prompt once this iteration's answer tells its size. A call sent after the last record was
        written is unknown and not counted (docs/checkpoints.md)."""
        counters = self.state.counters
        if counters.call_in_flight != iteration:
            return None
        streamed = 0
        for event in reversed(self.events.events):
            if event.type == "iteration":
                break
            if event.type == "token" and event.data.get("iteration") == iteration:
                streamed += 1
        counters.interrupted_calls += 1
        counters.unbilled_prompts += 1
        counters.completion_tokens += streamed
        log.info("iteration %d: counting the call a lost pod had in flight (%d tokens)", iteration, streamed)
        return streamed

    def _note_queue_wait(self, seconds: float) -> None:
        counters = self.state.counters
        counters.call_in_flight = counters.step + 1  # the permit came: the call goes out now
        counters.queue_wait_last = seconds
        counters.queue_wait_max = max(counters.queue_wait_max, seconds)
        counters.queue_wait_total += seconds

    async def _run_tools(self, answer: Message) -> bool:
        """Run the answer's tool calls concurrently, then append their results in call order.
        False when the time budget ran out before every call had a result."""
        step = self.state.counters.step
        calls = answer["tool_calls"]
        keys = [f"{self._config.run.uid}:{step}:{index}" for index in range(len(calls))]
        self._progress(f"iteration {step}: running {len(calls)} tool call(s)")
        self._needing_approval = []
        outcomes = await asyncio.gather(*(self._run_tool(call, key) for call, key in zip(calls, keys, strict=True)))
        if self._needing_approval:
            # The other calls' results are journaled; these wait for a decision, with no pod meanwhile.
            raise _AwaitingApprovalError(sorted(self._needing_approval, key=lambda request: request.key))
        if not all(outcomes):
            return False
        for call, key in zip(calls, keys, strict=True):
            self.state.messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": self.state.tool_log[key].output}
            )
        # No checkpoint of its own: these messages follow from the logged results (each checkpointed
        # as it came), so a pod lost now rebuilds them on resume, and the next record carries them.
        return True

    async def _run_tool(self, call: Message, key: str) -> bool:
        if key in self.state.tool_log:
            return True  # ran before a restart: its logged output is used, the call is not repeated
        name = call["function"]["name"]
        arguments = call["function"]["arguments"]
        remaining = self.remaining()
        if remaining <= 0:
            return False
        self.events.emit("tool_call", {"key": key, "name": name, "arguments": arguments})
        timeout = min(self._call_timeout, remaining)
        ok = False
        try:
            async with asyncio.timeout(timeout):
                output = await self._toolbox.dispatch(name, arguments, key)
            ok = True
        except ApprovalRequiredError as required:
            self._needing_approval.append(required.request)
            return True  # no result yet, nothing journaled: the call runs (or is denied) on a later pod
        except CallDeniedError as denial:
            output = str(denial)
        except ToolError as error:
            output = f"error: {error}"
        except TimeoutError:
            if timeout < self._call_timeout:
                return False
            output = f"error: {name} did not finish within tools.callTimeout ({self._spec.tools.call_timeout})"
        except Exception as error:  # a broken tool must not end the run; the model is told instead
            log.warning("tool %s failed: %s", name, error)
            output = f"error: {name} failed: {type(error).__name__}: {error}"
        self.state.tool_log[key] = ToolCallRecord(key=key, name=name, arguments=arguments, output=output, ok=ok)
        self.events.emit("tool_result", {"key": key, "name": name, "ok": ok, "output": output[:EVENT_OUTPUT_CHARS]})
        await self.checkpoint()
        return True

    # -- checkpoints, progress, the end ---------------------------------------------------------

    async def checkpoint(self, *, announce: bool = True, only_if_events_pending: bool = False) -> None:
        """Write a record of what is new; ``announce`` it with a `checkpoint` event (which the next
        record carries) when it ends a step of the loop."""
        async with self._checkpoint_lock:
            await self._settle()
            if only_if_events_pending and not self.events.pending:
                return
            self.state.counters.elapsed_seconds = self.clock.elapsed()
            record = self.state.delta(self.events.events)
            # Shielded: a SIGTERM that cancels the loop must not cut a record in half, and the next
            # record (suspend's) must know this one was written.
            self._writing = asyncio.ensure_future(self._write(record, announce=announce))
            await asyncio.shield(self._writing)

    def _schedule_flush(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_later())
            self._flushing.add_done_callback(_log_failure)

    async def _flush_later(self) -> None:
        # Events emitted meanwhile (a burst of tokens) share the write; a step checkpoint that comes
        # first writes them and leaves nothing to do here.
        await asyncio.sleep(self._flush_after)
        await self.checkpoint(announce=False, only_if_events_pending=True)

    def _stop_flushing(self) -> None:
        """The last record comes next: it carries every pending event, and nothing is written after it."""
        self.events.on_pending = None
        if self._flushing is not None:
            self._flushing.cancel()

    async def _settle(self) -> None:
        """Wait for a write that a cancellation left running."""
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])

    async def _write(self, record: dict[str, Any], *, announce: bool) -> None:
        counters = self.state.counters
        written = await self._store.append(record)
        self.state.mark_saved(record)
        if record["events"]:
            self.events.publish(record["events"][-1]["id"])
        self._last_checkpoint = CheckpointInfo(
            iteration=counters.step, time=datetime.now(UTC), bytes=written, total_bytes=self._store.total_bytes
        )
        if announce and counters.outcome is None:
            self.events.emit("checkpoint", {"iteration": counters.step, "record": record["seq"], "bytes": written})
        self._progress(self._message)

    def _progress(self, message: str) -> None:
        self._message = message
        self._reporter.submit(self.report)

    def announce(self, message: str) -> None:
        """Tell the operator something outside the loop's own steps (a resume, a checkpoint fallback)."""
        self._progress(message)

    def report(self) -> ProgressReport:
        """The report as of now. Every report after the result is stored carries its reference: a
        report with the outcome but not the result would tell the operator the run ended empty."""
        counters = self.state.counters
        return ProgressReport(
            run_uid=self._config.run.uid,
            pod=self._pod,
            iteration=counters.step,
            message=self._message[:MESSAGE_CHARS],
            usage=Usage(
                prompt_tokens=counters.prompt_tokens,
                completion_tokens=counters.completion_tokens,
                total_tokens=counters.total_tokens,
            ),
            queue_wait=QueueWait(
                last_seconds=counters.queue_wait_last,
                max_seconds=counters.queue_wait_max,
                total_seconds=counters.queue_wait_total,
            ),
            last_checkpoint=self._last_checkpoint,
            elapsed_seconds=self.clock.elapsed(),
            resumed_from_iteration=self._resumed_from,
            started_at=datetime.fromisoformat(counters.started_at) if counters.started_at else None,
            reported_at=datetime.now(UTC),
            outcome=Outcome(counters.outcome) if counters.outcome else None,
            result=self.result_ref(),
            approval_requests=list(self._awaiting) if counters.outcome is None else [],
        )

    def result_ref(self) -> ResultRef | None:
        counters = self.state.counters
        if counters.result_ref is None or self.state.result is None:
            return None
        return ResultRef(
            summary=self.state.result[:SUMMARY_CHARS], ref=counters.result_ref, bytes=counters.result_bytes
        )

    async def _finish(self, end: RunEnd) -> None:
        counters = self.state.counters
        if end.result is not None:
            self.state.result = end.result
            counters.result_ref = await self._store.save_result(end.result)
            counters.result_bytes = len(end.result.encode("utf-8"))
        counters.outcome = end.outcome.value
        counters.outcome_message = end.message
        result = self.result_ref()
        self.events.emit(
            "finished",
            {
                "outcome": end.outcome.value,
                "message": end.message,
                "iteration": counters.step,
                "result": result.model_dump(by_alias=True) if result else None,
            },
        )
        self._message = end.message
        self._stop_flushing()
        try:
            await self.checkpoint()
        except CheckpointError as error:
            # The outcome is still reported; a restarted pod would redo only the unrecorded tail.
            log.error("final checkpoint not written: %s", error)
        await self._reporter.write_now(self.report())

    async def _stop_for_approval(self, requests: list[ApprovalRequest]) -> None:
        """Journal the requests (stream events in the checkpoint), then report them: the runner exits next."""
        for request in requests:
            self.events.emit("approval_requested", request.model_dump(mode="json", by_alias=True))
        self._awaiting = requests
        tools = ", ".join(sorted({request.tool for request in requests}))
        self._message = (
            f"iteration {self.state.counters.step}: {len(requests)} call(s) of {tools} wait for approval; "
            "the runner stopped (kubectl agentrun approve|deny)"
        )
        self._stop_flushing()
        await self.checkpoint(announce=False)
        await self._reporter.write_now(self.report())

    async def suspend(self) -> None:
        """Checkpoint what the interrupted loop had (SIGTERM); the next pod resumes from it."""
        self._message = f"stopped at iteration {self.state.counters.step} (SIGTERM); the next pod resumes here"
        self._stop_flushing()
        await self._settle()
        await self.checkpoint(announce=False)  # the pod stops: an announcement would never be written
        await self._reporter.flush()
