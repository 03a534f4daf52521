"""Helpers to run the runner in tests: configs, the runner as a subprocess, a tool-side HTTP server.

The subprocess runs exactly the container's entrypoint (``python -m agentrun_runner``) with a
RunnerConfig file, as the Job would.
"""

import asyncio
import collections
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agentrun_api.contract import CheckpointLocation, ProgressReport, RunIdentity, RunnerConfig
from agentrun_api.spec import AgentRunSpec
from agentrun_runner import __main__ as runner_main
from agentrun_runner.checkpoint import ConfigMapStore, PvcStore
from agentrun_runner.kube import ConfigMaps, load_configuration
from agentrun_runner.settings import RunnerSettings
from agentrun_runner.state import RunState
from tests.harness.loopback_http import LoopbackServer
from tests.harness.source_roots import pythonpath

REPO_ROOT = Path(__file__).resolve().parents[2]
STREAM_TOKEN = "test-stream-token"
API_KEY = "sk-test-not-a-real-key"


def make_spec(model_url: str, **overrides: Any) -> AgentRunSpec:
    """A valid spec against the scripted model; ``overrides`` are spec fields in camelCase."""
    raw: dict[str, Any] = {
        "instructions": "You are a careful researcher.",
        "input": "Compare the vendors and write a report.",
        "model": {"name": "scripted-model", "baseURL": model_url, "requestTimeout": "10s", "maxRetries": 2},
        "maxExecutionTime": "5m",
        "maxIterations": 20,
        "streaming": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return AgentRunSpec.model_validate(raw)


def make_config(
    spec: AgentRunSpec,
    tmp_path: Path,
    *,
    store: str = "PersistentVolumeClaim",
    namespace: str = "default",
    name: str = "demo",
    uid: str = "0f0e0d0c-uid",
    stream_port: int = 0,
    soft_deadline_margin_seconds: float = 0.0,
    progress_interval_seconds: float = 0.05,
) -> RunnerConfig:
    return RunnerConfig(
        run=RunIdentity(namespace=namespace, name=name, uid=uid),
        spec=spec,
        checkpoint=CheckpointLocation(store=store, mount_path=str(tmp_path / "checkpoint")),  # type: ignore[arg-type]
        workspace_path=str(tmp_path / "workspace"),
        stream_port=stream_port,
        soft_deadline_margin_seconds=soft_deadline_margin_seconds,
        progress_interval_seconds=progress_interval_seconds,
    )


def runner_env(tmp_path: Path, config: RunnerConfig, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the runner process: config path, secrets, local settings."""
    config_path = tmp_path / "run.json"
    config_path.write_text(config.model_dump_json(by_alias=True))
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AGENTRUN_", "OPENAI_", "KUBECONFIG"))
    }
    env.update(
        {
            "PYTHONPATH": pythonpath(),
            "AGENTRUN_CONFIG": str(config_path),
            "OPENAI_API_KEY": API_KEY,
            "AGENTRUN_STREAM_TOKEN": STREAM_TOKEN,
            "POD_NAME": "demo-runner-test",
            "AGENTRUN_RUNNER_STREAM_HOST": "127.0.0.1",
            "AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "0.5",
            "AGENTRUN_RUNNER_RETRY_BASE_SECONDS": "0.05",
        }
    )
    if config.checkpoint.store == "PersistentVolumeClaim":
        env["AGENTRUN_RUNNER_PROGRESS_FILE"] = str(tmp_path / "progress.json")
    env.update(extra or {})
    return env


class RunnerProcess:
    """``python -m agentrun_runner`` as a child process, with its log collected line by line."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self.process: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._line_added = asyncio.Event()

    async def start(self) -> "RunnerProcess":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentrun_runner",
            env=self._env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(line.decode(errors="replace").rstrip())
            self._line_added.set()

    async def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.log:
                        if match := regex.search(line):
                            return match
                    if self.process is not None and self.process.returncode is not None:
                        raise AssertionError(f"runner exited before logging {pattern!r}:\n" + "\n".join(self.log))
                    self._line_added.clear()
                    await self._line_added.wait()
        except TimeoutError:
            raise AssertionError(
                f"runner logged no {pattern!r} within {timeout} s; its log:\n" + "\n".join(self.log[-40:])
            ) from None

    async def stream_port(self) -> int:
        return int((await self.wait_for_log(r"serving the event stream on port (\d+)"))[1])

    async def wait(self, timeout: float = 25.0) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
        return code

    def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader

    @property
    def output(self) -> str:
        return "\n".join(self.log)


@dataclass(frozen=True)
class InProcessRun:
    exit_code: int
    progress: ProgressReport
    state: RunState


async def run_in_process(
    config: RunnerConfig, tmp_path: Path, *, stream_token: str = STREAM_TOKEN, permit_key: str = "", **settings: Any
) -> InProcessRun:
    """Run the runner's main coroutine in this event loop (PVC store, file progress sink).

    The subprocess form is the container's real entrypoint; this form keeps limit tests fast."""
    values: dict[str, Any] = {
        "progress_file": str(tmp_path / "progress.json"),
        "sse_linger_seconds": 0.0,
        "retry_base_seconds": 0.02,
        "stream_host": "127.0.0.1",
    }
    values.update(settings)
    saved = {name: os.environ.get(name) for name in ("OPENAI_API_KEY", "AGENTRUN_STREAM_TOKEN", "AGENTRUN_PERMIT_KEY")}
    os.environ["OPENAI_API_KEY"] = API_KEY
    os.environ["AGENTRUN_STREAM_TOKEN"] = stream_token
    os.environ["AGENTRUN_PERMIT_KEY"] = permit_key
    try:
        code = await runner_main.run(config, RunnerSettings(**values))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return InProcessRun(exit_code=code, progress=read_progress(tmp_path), state=await load_state(config))


async def load_state(config: RunnerConfig) -> RunState:
    """The state a runner would resume from (PVC store)."""
    loaded = await PvcStore(Path(config.checkpoint.mount_path), "test", run_uid=config.run.uid).load()
    assert loaded.problem is None, loaded.problem
    state = RunState()
    for record in loaded.records:
        state.apply(record)
    return state


async def load_configmap_state(config: RunnerConfig, kubeconfig: Path) -> tuple[RunState, str | None]:
    """The state a runner would resume from (ConfigMap store), and the problem the store reported."""
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        configmaps = ConfigMaps(load_configuration(), config.run.namespace, owner=config.run)
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG")
        else:
            os.environ["KUBECONFIG"] = saved
    try:
        loaded = await ConfigMapStore(
            configmaps, config.run.name, run_uid=config.run.uid, max_segments=config.checkpoint.max_segments
        ).load()
    finally:
        await configmaps.close()
    state = RunState()
    for record in loaded.records:
        state.apply(record)
    return state, loaded.problem


def read_progress(tmp_path: Path) -> ProgressReport:
    return ProgressReport.model_validate_json((tmp_path / "progress.json").read_text())


class ToolServer(LoopbackServer):
    """The far side of http_fetch: executes each Idempotency-Key once and replays it after.

    ``executions`` counts real executions per key; ``deliveries`` counts every request per key;
    ``max_in_flight`` is the most requests it held at once. Paths: ``/slow/<seconds>`` answers
    late; ``/together/<name>`` waits until ``rendezvous`` requests are in flight (or 5 s), which
    only concurrent callers can reach; ``/bytes/<n>`` answers ``large_body(n)``, written in pieces
    so that it arrives over many network reads.
    """

    def __init__(self, rendezvous: int = 2) -> None:
        self.rendezvous = rendezvous
        self.in_flight = 0
        self.max_in_flight = 0
        self._arrived = asyncio.Condition()
        self.executions: collections.Counter[str] = collections.Counter()
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.requests_without_key = 0
        self._answers: dict[str, str] = {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{path:.*}", self._get)

    async def _get(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            self.requests_without_key += 1
            return web.Response(status=400, text="Idempotency-Key required")
        self.deliveries[key] += 1
        path = request.match_info["path"]
        async with self._arrived:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._arrived.notify_all()
        try:
            if path.startswith("slow/"):
                await asyncio.sleep(float(path.removeprefix("slow/")))
            elif path.startswith("together/"):
                async with self._arrived:
                    await asyncio.wait_for(
                        self._arrived.wait_for(lambda: self.max_in_flight >= self.rendezvous), timeout=5
                    )
        finally:
            self.in_flight -= 1
        if path.startswith("bytes/"):
            self.executions[key] += 1
            return await self._large_body(request, int(path.removeprefix("bytes/")))
        if key not in self._answers:
            self.executions[key] += 1
            self._answers[key] = f"source {request.match_info['path']}: fetched once under {key}"
        return web.Response(text=self._answers[key], content_type="text/plain")

    async def _large_body(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.content_length = size
        await response.prepare(request)
        body = large_body(size)
        for start in range(0, size, LARGE_BODY_PIECE):
            await response.write(body[start : start + LARGE_BODY_PIECE])
        await response.write_eof()
        return response


LARGE_BODY_PIECE = 16 * 1024


def large_body(size: int) -> bytes:
    """``size`` bytes of ASCII text in which every line is different, so a lost or repeated piece shows."""
    line = b"line %07d of a long page\n"
    lines = b"".join(line % n for n in range(size // len(line % 0) + 1))
    return lines[:size]
