"""Entrypoint of the runner container: ``python -m agentrun_runner``.

Reads the RunnerConfig from the file named by AGENTRUN_CONFIG, loads the last good checkpoint,
serves the event stream and runs the agent loop to an outcome. Exit codes: 0 when the outcome is
recorded, or when the run stopped at calls that wait for approval (reported; the next pod resumes); 3 (EXIT_INVALID_CONFIG) for a config or setting that can never work; 143 after SIGTERM
(state checkpointed, no outcome: the next pod resumes); 1 for any other error, a crash (the Job
replaces the pod, which resumes from the checkpoint).
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agentrun_api.contract import (
    API_KEY_ENV,
    APPROVALS_FILE,
    CONFIG_ENV,
    CONFIG_FILE,
    CONFIG_MOUNT_PATH,
    DEADLINE_ENV,
    EXIT_INVALID_CONFIG,
    EXIT_OUTCOME_RECORDED,
    PERMIT_KEY_ENV,
    POD_IP_ENV,
    POD_NAME_ENV,
    STREAM_TOKEN_ENV,
    RunnerConfig,
)
from agentrun_common.durations import parse_duration
from agentrun_common.settings import SettingsError
from agentrun_runner.agent import Agent, AwaitingApproval
from agentrun_runner.approvals import ApprovalGate, load_decisions
from agentrun_runner.archive import archive_ended_run
from agentrun_runner.checkpoint import CheckpointError, CheckpointStore, ConfigMapStore, PvcStore
from agentrun_runner.events import EventLog
from agentrun_runner.kube import ConfigMaps, KubeError, load_configuration
from agentrun_runner.model import ModelClient
from agentrun_runner.progress import ConfigMapProgressSink, FileProgressSink, ProgressReporter, ProgressSink
from agentrun_runner.settings import RunnerSettings
from agentrun_runner.state import RunState
from agentrun_runner.throttle import InProcessLimiter, Limiter
from agentrun_runner.tools import Toolbox, ToolContext, Workspace

if TYPE_CHECKING:
    from agentrun_runner.stream import StreamServer

# A resumed pod's time to its first model call is mostly imports, so modules that call needs
# (the SDK, the models, the checkpoint store) are imported above and the others (the stream
# server, the throttle pool client, and aiohttp under them) only when a run uses them.

log = logging.getLogger("agentrun_runner")

EXIT_SIGTERM = 143  # 128 + SIGTERM: stopped on request, resumable; not an outcome
EXIT_CRASH = 1


class ConfigProblemError(Exception):
    """The config or the environment can never work; the message says what to fix."""


def read_deadline(raw: str | None) -> datetime | None:
    """The run's absolute deadline the operator set on the Job; None when the runner runs without one."""
    if not raw:
        return None
    try:
        deadline = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigProblemError(f"{DEADLINE_ENV}={raw!r} is not an ISO 8601 time (the operator sets it)") from None
    if deadline.tzinfo is None:
        raise ConfigProblemError(f"{DEADLINE_ENV}={raw!r} has no time zone; give it in UTC, e.g. ending in +00:00")
    return deadline


def load_config(path: Path) -> RunnerConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigProblemError(f"cannot read the runner config {path} (set {CONFIG_ENV}): {error.strerror}") from None
    try:
        return RunnerConfig.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '(root)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigProblemError(f"runner config {path} is invalid: {problems}") from None


def build_limiter(config: RunnerConfig, permit_key: str, on_pool_missing: Callable[[str], None]) -> Limiter | None:
    """The throttle in front of model calls: None when the run has no throttle; else the run's own
    in-process limits (spec.throttle), and, when the operator named a permit server, the permits of
    the ThrottlePool the run names as well (while that pool exists)."""
    throttle = config.spec.throttle
    if not throttle.enabled:
        return None
    # A run makes one model call at a time, so its own limit is on the pace only.
    own = InProcessLimiter(max_concurrent=1, requests_per_minute=throttle.requests_per_minute)
    if config.permit_server_url:
        from agentrun_runner.throttle_remote import PooledLimiter, RemoteLimiter

        return PooledLimiter(own, RemoteLimiter.for_run(config, permit_key), on_pool_missing=on_pool_missing)
    return own


async def start_stream_server(
    config: RunnerConfig, settings: RunnerSettings, events: EventLog, token: str
) -> "StreamServer":
    from agentrun_runner.stream import StreamServer

    server = StreamServer(
        events,
        token=token,
        heartbeat_seconds=parse_duration(config.spec.streaming.heartbeat_interval),
        client_queue_size=settings.sse_client_queue_size,
        host=settings.stream_host or os.environ.get(POD_IP_ENV) or "0.0.0.0",  # noqa: S104
        port=config.stream_port,
        keep_alive_seconds=config.stream_keep_alive_seconds,
    )
    await server.start()
    log.info("serving the event stream on port %d", server.port)
    return server


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or f"{CONFIG_MOUNT_PATH}/{CONFIG_FILE}")


def read_approval_gate(config: RunnerConfig) -> ApprovalGate:
    """spec.approvals with the decisions the operator wrote next to the config (none before a first wait)."""
    if config.spec.approvals is None:
        return ApprovalGate(None)
    try:
        return ApprovalGate(config.spec.approvals, load_decisions(config_path().with_name(APPROVALS_FILE)))
    except ValueError as error:
        raise ConfigProblemError(str(error)) from None


async def run(config: RunnerConfig, settings: RunnerSettings) -> int:
    spec = config.spec
    stream_token = os.environ.get(STREAM_TOKEN_ENV, "")
    if spec.streaming.enabled and not stream_token:
        raise ConfigProblemError(f"streaming is enabled but {STREAM_TOKEN_ENV} is not set (Secret <run>-stream-token)")
    permit_key = os.environ.get(PERMIT_KEY_ENV, "")
    if config.permit_server_url and spec.throttle.enabled and not permit_key:
        raise ConfigProblemError(
            f"the run draws throttle permits but {PERMIT_KEY_ENV} is not set (Secret <run>-permit-key)"
        )
    configmaps: ConfigMaps | None = None
    if config.checkpoint.store == "ConfigMap" or not settings.progress_file:
        configmaps = ConfigMaps(load_configuration(), config.run.namespace, owner=config.run)
    store: CheckpointStore
    if config.checkpoint.store == "ConfigMap":
        assert configmaps is not None
        store = ConfigMapStore(
            configmaps, config.run.name, run_uid=config.run.uid, max_segments=config.checkpoint.max_segments
        )
    else:
        store = PvcStore(Path(config.checkpoint.mount_path), f"{config.run.name}-ckpt", run_uid=config.run.uid)
    sink: ProgressSink
    if settings.progress_file:
        sink = FileProgressSink(Path(settings.progress_file))
    else:
        assert configmaps is not None
        sink = ConfigMapProgressSink(configmaps, config.run.name)

    loaded = await store.load()
    state = RunState()
    problem = loaded.problem
    for record in loaded.records:
        try:
            state.apply(record)
        except (ValueError, KeyError, TypeError) as error:
            problem = f"checkpoint record {state.records} does not fit the state before it ({error})"
            break
    workspace = Workspace(Path(config.workspace_path), state.note_file_written, settings.max_read_file_bytes)
    workspace.restore(state.files)
    events = EventLog(state.events, numbered_after=state.legacy_event_ceiling)
    resumed_from = state.counters.step if state.records else None

    reporter = ProgressReporter(sink, config.progress_interval_seconds)

    def pool_missing(message: str) -> None:
        log.warning("%s", message)
        agent.announce(message)  # the run's status message; the agent exists before any model call

    limiter = build_limiter(config, permit_key, pool_missing)
    model = ModelClient(
        spec.model,
        api_key=os.environ.get(API_KEY_ENV),
        limiter=limiter,
        max_queue_wait_seconds=float(spec.throttle.max_seconds_to_wait_in_queue),
        settings=settings,
    )
    toolbox = Toolbox(
        ToolContext(config=config, workspace=workspace, settings=settings, env=os.environ), read_approval_gate(config)
    )
    agent = Agent(
        config,
        state=state,
        events=events,
        store=store,
        reporter=reporter,
        model=model,
        toolbox=toolbox,
        pod=os.environ.get(POD_NAME_ENV) or socket.gethostname(),
        resumed_from_iteration=resumed_from,
        event_flush_seconds=settings.event_flush_seconds,
        deadline=read_deadline(os.environ.get(DEADLINE_ENV)),
    )
    server: StreamServer | None = None
    if spec.streaming.enabled:
        server = await start_stream_server(config, settings, events, stream_token)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reporter.start()
    log.info("run %s/%s: starting at iteration %d", config.run.namespace, config.run.name, state.counters.step)
    try:
        if problem is not None:
            # Never start over silently: say what was dropped and where the run resumes.
            message = f"{problem}; resuming from the last good checkpoint (iteration {state.counters.step})"
            log.warning("%s", message)
            events.emit("checkpoint", {"fallback": True, "problem": problem, "iteration": state.counters.step})
            agent.announce(message)
        elif resumed_from is not None:
            log.info("resuming from iteration %d", resumed_from)
            agent.announce(f"resumed from the checkpoint at iteration {resumed_from}")

        if state.counters.outcome is not None:
            # A pod that dies between recording the outcome and exiting: report it again and stop.
            agent.announce(state.counters.outcome_message)
            await reporter.write_now(agent.report())
        else:
            loop_task = asyncio.create_task(agent.run(), name="agent-loop")
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait([loop_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
            if not loop_task.done():
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
                await agent.suspend()
                log.info("stopped on SIGTERM at iteration %d; state checkpointed", state.counters.step)
                return EXIT_SIGTERM
            stop_task.cancel()
            end = loop_task.result()
            if isinstance(end, AwaitingApproval):
                # Checkpointed and reported: the pod goes, and a new one resumes once the calls are decided.
                log.info(
                    "stopped at iteration %d: %d call(s) wait for approval", state.counters.step, len(end.requests)
                )
                return EXIT_OUTCOME_RECORDED
            log.info("run ended: %s: %s", end.outcome.value, end.message)
        if configmaps is not None and spec.streaming.enabled and config.checkpoint.store == "PersistentVolumeClaim":
            # The claim leaves with the pod's reach; the ConfigMap store holds the log already.
            await archive_ended_run(configmaps, config.run.name, events.after(0))
        if server is not None:
            # Linger so readers that are reconnecting still get the replay and `finished`.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.sse_linger_seconds)
        return EXIT_OUTCOME_RECORDED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await reporter.stop()
        if server is not None:
            await server.stop()
        await toolbox.close()
        await model.close()
        if config.permit_server_url:
            from agentrun_runner.throttle_remote import PooledLimiter

            if isinstance(limiter, PooledLimiter):
                await limiter.aclose()
        await store.close()
        if configmaps is not None:
            await configmaps.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per HTTP request of the SDK is noise next to the runner's own progress lines.
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = RunnerSettings.from_env()
        config = load_config(config_path())
        code = asyncio.run(run(config, settings))
    except (ConfigProblemError, SettingsError) as problem:
        # The only exit that fails the Job at once (its podFailurePolicy) and the run as InvalidSpec:
        # reserved for what the user must fix, never for an error met while running.
        log.error("%s", problem)
        sys.exit(EXIT_INVALID_CONFIG)
    except (CheckpointError, KubeError) as error:
        # Could not even load the state or report: the Job replaces the pod and it tries again.
        log.error("%s", error)
        sys.exit(EXIT_CRASH)
    except Exception:
        # A bug or an answer the runner did not expect, not the user's spec: the Job replaces the pod,
        # which resumes from the last checkpoint, within spec.retries.maxRestarts.
        log.exception("runner crashed; the next pod resumes from the last checkpoint")
        sys.exit(EXIT_CRASH)
    sys.exit(code)


if __name__ == "__main__":
    main()
