"""The whole path on the real control plane: the operator, runner pods on the node agent, a model.

    async with LocalCluster(testbed, tmp_path) as cluster:
        cluster.namespace            # a fresh namespace the operator watches (deleted afterwards)
        cluster.kubeconfig_path      # a cluster admin's, for kubectl and test set-up
        cluster.model.base_url       # the scripted model server, or a real endpoint (see below)
        cluster.node                 # the node agent: pods as local processes, chaos helpers
        await cluster.operator.restart()   # or .kill() for a crash; .log() for its output

The control plane is the session's ``KubeTestbed`` (real etcd, kube-apiserver, controller-manager and
scheduler, with the CRDs from ``crds/``). With ``from_chart=True`` (the e2e suite's ``cluster`` fixture) the operator
is the chart's: a Helm release in the namespace, its pod on the node (``installed_chart.ChartOperator``). Otherwise
it runs as a child process (``python -m agentrun_operator``) with short intervals and its own ServiceAccount's
token and the chart's RBAC; runner
pods run the working tree's ``python -m agentrun_runner`` on the node agent, and ``kubectl logs`` reads them.
The model is the scripted OpenAI-compatible server unless both ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL`` are set, in which case runs use that real endpoint (model ``OPENAI_MODEL``).

One command: ``python -m tests.harness.local_cluster --state-dir DIR`` starts a control plane and everything
else, prints the kubeconfig path and model URL, and runs until interrupted (``make local-cluster``).
"""

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from httpx import URL

from tests.harness.apiproxy import ApiProxy
from tests.harness.identities import GATEWAY_SERVICE_ACCOUNT, operator_identity
from tests.harness.installed_chart import ChartOperator, ground_values, merged_values
from tests.harness.model_server import DEFAULT_MODEL, ModelServer, Script, research_script
from tests.harness.nodeagent.kube import KubeClient, namespaced_path
from tests.harness.nodeagent.settings import NodeSettings
from tests.harness.nodeagent.threaded import NodeAgentThread
from tests.harness.source_roots import pythonpath
from tests.harness.testbed import KubeTestbed

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATHS = sorted((REPO_ROOT / "crds").glob("*.yaml"))
SCRIPTED_API_KEY = "scripted-model-key"  # the scripted server accepts any key; runs still need a Secret


def free_port() -> int:
    """A port free on 127.0.0.1 now, for servers that cannot be told to take port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _python_path() -> str:
    return pythonpath()


@dataclass(frozen=True)
class ModelEndpoint:
    """Where runs send model calls."""

    base_url: str
    api_key: str
    model: str  # the model name runs ask for (OPENAI_MODEL for a real endpoint, default gpt-4.1-mini)
    real: bool  # a real endpoint from OPENAI_BASE_URL/OPENAI_API_KEY, not the scripted server


@dataclass(frozen=True)
class OperatorTimings:
    """Operator settings for a local cluster: every interval short, so tests see changes in seconds."""

    status_min_interval_seconds: float = 0.2
    """AGENTRUN_STATUS_MIN_INTERVAL_SECONDS (default 0.2; product default 2)."""
    progress_interval_seconds: float = 0.5
    """AGENTRUN_PROGRESS_INTERVAL_SECONDS (default 0.5; product default 2)."""
    supervise_interval_seconds: float = 0.5
    """AGENTRUN_SUPERVISE_INTERVAL_SECONDS (default 0.5; product default 60)."""
    outcome_grace_seconds: float = 2.0
    """AGENTRUN_OUTCOME_GRACE_SECONDS (default 2; product default 10)."""
    retry_delay_seconds: float = 1.0
    """AGENTRUN_RETRY_DELAY_SECONDS (default 1; product default 30)."""
    permit_lease_seconds: float = 1.5
    """AGENTRUN_PERMIT_LEASE_SECONDS (default 1.5; product default 15): also how long a new pool waits
    before its first grant."""
    pool_status_interval_seconds: float = 0.5
    """AGENTRUN_POOL_STATUS_INTERVAL_SECONDS (default 0.5; product default 60)."""

    def env(self) -> dict[str, str]:
        """Each field as the operator's variable of the same name (AGENTRUN_<FIELD IN CAPITALS>)."""
        return {f"AGENTRUN_{timing.name.upper()}": str(getattr(self, timing.name)) for timing in fields(self)}


class OperatorProcess:
    """The real operator as a child process: start, wait until /healthz answers, stop, kill, restart.

    Its permit server (throttle pools) listens on 127.0.0.1:``permit_port``, the same port after a
    restart; runner pods share the host's network, so ``permit_server_url`` is what runs are given.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, *, startup_timeout_seconds: float = 30.0) -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.permit_port = free_port()
        self._env = {
            **env,
            "AGENTRUN_HEALTH_PORT": str(self.health_port),
            "AGENTRUN_METRICS_PORT": str(self.metrics_port),
            "AGENTRUN_PERMIT_HOST": "127.0.0.1",
            "AGENTRUN_PERMIT_PORT": str(self.permit_port),
            "AGENTRUN_PERMIT_SERVER_URL": self.permit_server_url,
        }
        self.log_path = log_path
        self._startup_timeout = startup_timeout_seconds
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def permit_server_url(self) -> str:
        return f"http://127.0.0.1:{self.permit_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agentrun_operator",
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        await self._wait_healthy()

    async def _wait_healthy(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.process is None or self.process.returncode is not None:
                    raise RuntimeError(f"the operator exited during startup:\n{self.log()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the operator did not answer {url} within {self._startup_timeout}s:\n{self.log()[-3000:]}")

    async def stop(self, grace_seconds: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after the grace period, as a Deployment rollout would."""
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), grace_seconds)
        except TimeoutError:
            return await self.kill()

    async def kill(self) -> int | None:
        """SIGKILL: the operator crashes with no chance to clean up."""
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return await process.wait()

    async def restart(self, *, crash: bool = False) -> None:
        await (self.kill() if crash else self.stop())
        await self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class LocalCluster:
    """Everything a run needs, in one namespace of the test control plane. See the module docstring."""

    testbed: KubeTestbed
    state_dir: Path
    namespace: str = ""
    """The namespace runs go in; empty: a fresh one named after the state folder (deleted at the end)."""
    model_script: Script | None = None
    """The scripted model server's script (default: the runner helper's research script)."""
    timings: OperatorTimings = field(default_factory=OperatorTimings)
    operator_env: Mapping[str, str] = field(default_factory=dict)
    """Extra operator env vars, over the timings."""
    start_operator: bool = True
    operator_behind_proxy: bool = False
    """The operator reaches the API server through an ApiProxy (``api_proxy``), whose faults a test can inject."""
    from_chart: bool = False
    """The operator as the chart installs it: a Helm release of its own in the namespace, watching only it, its pod
    on the node with the chart's ServiceAccount and RBAC (``installed_chart.ChartOperator``). The chart's settings
    then apply, not ``timings`` or ``operator_env`` (the status and progress intervals are the chart's values)."""

    chart_values: Mapping[str, Any] = field(default_factory=dict)
    """With ``from_chart``: values over the test ground's (a policy, say), merged key by key."""

    operator: "OperatorProcess | ChartOperator" = field(init=False)
    model: ModelEndpoint = field(init=False)
    model_server: ModelServer | None = field(init=False, default=None)
    kubeconfig_path: Path = field(init=False)
    """A cluster admin's kubeconfig whose context names this cluster's namespace (for kubectl and test set-up)."""
    operator_kubeconfig_path: Path = field(init=False)
    api_proxy: ApiProxy | None = field(init=False, default=None)
    """With ``operator_behind_proxy``: the proxy between the operator and the API server (faults, request log)."""
    """The operator's: its own ServiceAccount's token and the chart's RBAC, nothing more."""
    _stack: contextlib.AsyncExitStack = field(init=False, default_factory=contextlib.AsyncExitStack)

    @property
    def node(self) -> NodeAgentThread:
        """The node the runs' pods run on: inspect, signal and read the logs of their processes."""
        return self.testbed.node

    async def __aenter__(self) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        if not self.namespace:
            self.namespace = await asyncio.to_thread(self.testbed.create_namespace, self.state_dir.name)
            self._stack.callback(self.testbed.delete_namespace, self.namespace)
        control_plane = self.testbed.control_plane
        self.kubeconfig_path = control_plane.admin_kubeconfig_for(self.state_dir / "admin.kubeconfig", self.namespace)
        identity = await asyncio.to_thread(operator_identity, control_plane)
        await asyncio.to_thread(identity.grant, self.namespace)
        if self.operator_behind_proxy:
            self.api_proxy = await self._stack.enter_async_context(
                ApiProxy(control_plane.url, ca_file=control_plane.ca_file)
            )
        self.operator_kubeconfig_path = await asyncio.to_thread(
            identity.kubeconfig,
            self.state_dir / "operator.kubeconfig",
            self.namespace,
            self.api_proxy.url if self.api_proxy is not None else None,
        )
        self.model = await self._start_model()
        if self.from_chart:
            if self.operator_env or self.operator_behind_proxy:
                raise ValueError("operator_env and operator_behind_proxy need the operator as a child process")
            self.operator = ChartOperator(self.testbed, self.namespace, self._chart_values())
            self._stack.push_async_callback(self.operator.stop)
            if self.start_operator:
                await self.operator.start()
            return
        env = {
            **NodeSettings().base_env,
            "PYTHONPATH": _python_path(),
            "KUBECONFIG": str(self.operator_kubeconfig_path),
            "AGENTRUN_WATCH_NAMESPACE": self.namespace,
            "AGENTRUN_GATEWAY_SERVICE_ACCOUNT": GATEWAY_SERVICE_ACCOUNT,
            **self.timings.env(),
            **self.operator_env,
        }
        self.operator = OperatorProcess(env, self.state_dir / "operator.log")
        self._stack.push_async_callback(self.operator.stop)
        if self.start_operator:
            await self.operator.start()

    def _chart_values(self) -> dict[str, Any]:
        """The test ground's values, with a policy admitting what the tests use: the model's host, webhooks to the
        test process on 127.0.0.1, and any runner image (tests name images no registry serves; the closed policy
        is tests/e2e/test_policy.py's)."""
        model_host = str(URL(self.model.base_url).host)
        values = ground_values(
            policy={
                "allowedModelHosts": [model_host],
                "allowedWebhookHosts": ["127.0.0.1"],
                "allowedImages": ["*"],
            },
            operator={
                "statusMinIntervalSeconds": self.timings.status_min_interval_seconds,
                "progressIntervalSeconds": self.timings.progress_interval_seconds,
            },
        )
        return merged_values(values, dict(self.chart_values))

    async def _start_model(self) -> ModelEndpoint:
        real_key, real_url = os.environ.get("OPENAI_API_KEY"), os.environ.get("OPENAI_BASE_URL")
        if real_key and real_url:
            return ModelEndpoint(real_url, real_key, os.environ.get("OPENAI_MODEL", "gpt-4.1-mini"), real=True)
        self.model_server = await self._stack.enter_async_context(ModelServer(self.model_script or research_script()))
        return ModelEndpoint(self.model_server.base_url, SCRIPTED_API_KEY, DEFAULT_MODEL, real=False)

    async def create_model_secret(self, name: str = "model-api-key", key: str = "api-key") -> None:
        """The Secret a run's spec.model.apiKeySecretRef points at, holding the model's API key."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace},
            "stringData": {key: self.model.api_key},
        }
        async with KubeClient(str(self.kubeconfig_path)) as kube:
            await kube.create(namespaced_path("v1", "secrets", self.namespace), body)


async def _serve(state_dir: Path, namespace: str) -> None:
    testbed = await asyncio.to_thread(KubeTestbed(state_dir / "testbed").__enter__)
    try:
        if namespace != "default":
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            await asyncio.to_thread(testbed.admin.post, "/api/v1/namespaces", json=body)
        async with LocalCluster(testbed, state_dir.resolve(), namespace=namespace) as cluster:
            print(f"Kubernetes {testbed.version}; KUBECONFIG={cluster.kubeconfig_path}", flush=True)
            print(f"model: {cluster.model.base_url} ({'real' if cluster.model.real else 'scripted'})", flush=True)
            print(f"operator log: {cluster.operator.log_path}; metrics: {cluster.operator.metrics_url}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
    finally:
        await asyncio.to_thread(testbed.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the whole agentrun path on this machine until interrupted.")
    parser.add_argument("--state-dir", type=Path, required=True, help="where pods, logs and claims live")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    asyncio.run(_serve(args.state_dir, args.namespace))


if __name__ == "__main__":
    main()
