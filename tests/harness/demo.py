"""`make demo`: one AgentRun from examples/, from Pending to Succeeded, killed and resumed on the way.

    python -m tests.harness.demo

Starts a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built
by `make kube-binaries`) with a node agent for pods, installs the chart with Helm (the operator as a pod of the
chart's Deployment, with the chart's ServiceAccount and RBAC), starts the scripted model unless OPENAI_API_KEY and
OPENAI_BASE_URL are set, applies examples/secret.yaml and
examples/minimal.yaml with the real kubectl, shows `kubectl get agentruns -w` as it runs, SIGKILLs the
runner in the middle, shows the real Job controller's replacement resuming from its checkpoint and the runner's
`kubectl logs`, then prints the status, the
Events, the result and the run's event stream (read over SSE from the runner, with Last-Event-ID across
the kill). Exit 0 when the run succeeded; 1 with one clear message when something did not work.
"""

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import yaml
from httpx_sse import SSEError, aconnect_sse

from agentrun_api.contract import STREAM_PORT
from tests.harness.controlplane import BinariesMissingError, find_binaries
from tests.harness.installed_chart import ChartRelease, ground_values
from tests.harness.local_cluster import REPO_ROOT, LocalCluster, ModelEndpoint
from tests.harness.model_server import Script, stepwise_script
from tests.harness.nodeagent import MountNamespaceUnavailableError, check_mount_namespaces
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.sse_client import dispatched_events
from tests.harness.testbed import CONTAINER_RUNTIME_ENV, KubeTestbed, container_runtime

RUN = "minimal"
NAMESPACE = "default"
EXAMPLES = REPO_ROOT / "examples"
STEPS = 10
"""Model calls the scripted agent makes: minimal.yaml's maxIterations, so PROGRESS reaches 10/10."""
ANSWER_DELAY_SECONDS = 1.5
"""Seconds the scripted model takes per answer: slow enough to watch, 10 answers in about 15 s."""
KILL_AT_ITERATION = 4
"""The runner is SIGKILLed once a checkpoint at this iteration exists."""
STEP_TIMEOUT_SECONDS = 40.0
"""Longest wait for any one thing the demo expects (a checkpoint, a pod, the end of the run)."""
WATCH_PREFIX = "  watch  | "
STREAM_PREFIX = "  stream | "
TERMINAL_PHASES = ("Succeeded", "Failed", "TimedOut", "Cancelled")

T = TypeVar("T")


def point_at_model(manifest: JsonObject, model: ModelEndpoint) -> JsonObject:
    """An example AgentRun as applied here: the same, but for spec.model.baseURL (the examples call the public
    API) and, for a real endpoint, spec.model.name (OPENAI_MODEL). The file itself stays as it is."""
    spec_model = {**manifest["spec"]["model"], "baseURL": model.base_url}
    if model.real:
        spec_model["name"] = model.model
    return {**manifest, "spec": {**manifest["spec"], "model": spec_model}}


class DemoError(Exception):
    """An expected failure: the demo says what went wrong (and what to do) in one message and exits 1."""


def say(text: str = "") -> None:
    print(text, flush=True)


def section(title: str) -> None:
    say(f"\n== {title} " + "=" * max(3, 96 - len(title)))


def banner(real_model: bool) -> None:
    say("agentrun-operator demo: examples/minimal.yaml from Pending to Succeeded, with a runner killed on the way")
    say()
    say("  REAL      Kubernetes: etcd, kube-apiserver (RBAC, the CRD's schema and CEL), kube-controller-manager")
    say("            (the Job controller, garbage collector) and kube-scheduler, built from their Go modules")
    say(
        "            Helm (v4's engine) installing the chart; the operator (kopf, `python -m agentrun_operator`) as a pod"
    )
    say("            of the chart's Deployment with the chart's ServiceAccount and RBAC; the runner")
    say("            (`python -m agentrun_runner` on the official openai SDK), kubectl, and HTTP on 127.0.0.1")
    if real_model:
        say("            the model: a real OpenAI-compatible endpoint (OPENAI_BASE_URL, OPENAI_API_KEY)")
    say("  EMULATED  the kubelet: a node agent (tests/harness/nodeagent) runs each pod the scheduler binds to its")
    say("            Node as local processes in their own mount namespaces, with the pod's real token and volumes")
    if not real_model:
        say(
            f"            the model: a scripted OpenAI-compatible server on 127.0.0.1 ({STEPS} answers, "
            f"{ANSWER_DELAY_SECONDS:g} s each); set OPENAI_API_KEY and OPENAI_BASE_URL for a real one"
        )


def kubectl_binary() -> Path:
    beside = Path(sys.executable).with_name("kubectl")
    if beside.exists():
        return beside
    found = shutil.which("kubectl")
    if found is None:
        raise DemoError("kubectl was not found next to this Python or on PATH; `make install` installs it into .venv")
    return Path(found)


@dataclass
class Kubectl:
    """The real kubectl against the local cluster's kubeconfig; every command is printed before it runs."""

    binary: Path
    kubeconfig: Path

    def _env(self) -> dict[str, str]:
        # This Python's bin directory first, so kubectl finds the project's plugin (kubectl-agentrun) there.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def has_plugin(self, name: str) -> bool:
        return shutil.which(f"kubectl-{name}", path=self._env()["PATH"]) is not None

    async def run(self, *args: str, stdin: bytes | None = None, shown_as: str = "", show_output: bool = True) -> str:
        say(f"  $ {shown_as or 'kubectl ' + ' '.join(args)}")
        process = await asyncio.create_subprocess_exec(
            str(self.binary),
            *args,
            env=self._env(),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), STEP_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DemoError(f"`kubectl {' '.join(args)}` did not finish within {STEP_TIMEOUT_SECONDS:.0f}s") from None
        text = out.decode(errors="replace")
        if show_output:
            for line in text.rstrip("\n").splitlines():
                say(f"    {line}")
        if process.returncode != 0:
            raise DemoError(f"`kubectl {' '.join(args)}` exited {process.returncode}: {err.decode().strip()}")
        return text


@dataclass
class Watch:
    """`kubectl get agentruns -w` as a child process, its lines streamed to the terminal as they come."""

    kubectl: Kubectl
    lines: list[str] = field(default_factory=list)
    _process: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        say("  $ kubectl get agentruns -w        (keeps running; its lines are prefixed `watch |`)")
        self._process = await asyncio.create_subprocess_exec(
            str(self.kubectl.binary),
            "get",
            "agentruns",
            "-w",
            env=self.kubectl._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._pump = asyncio.create_task(self._stream(self._process))

    async def _stream(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            say(WATCH_PREFIX + line)

    def phases(self) -> list[str]:
        """The PHASE column of every row so far, repeats of the same phase folded."""
        seen: list[str] = []
        for line in self.lines:
            cells = line.split()
            phase = cells[1] if len(cells) >= 2 and cells[0] == RUN else ""
            if phase in ("Pending", "Running", "Suspended", *TERMINAL_PHASES) and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._pump, 5)


@dataclass(frozen=True)
class StreamEvent:
    id: int
    event: str
    data: str
    pod: str


async def wait_for(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT_SECONDS
    while loop.time() < deadline:
        found = await probe()
        if found is not None:
            return found
        await asyncio.sleep(0.1)
    raise DemoError(f"timed out after {STEP_TIMEOUT_SECONDS:.0f}s waiting for {what}")


class Demo:
    def __init__(self, cluster: LocalCluster, kube: KubeClient, kubectl: Kubectl) -> None:
        self.cluster = cluster
        self.kube = kube
        self.kubectl = kubectl
        self.stream_events: list[StreamEvent] = []

    async def status(self) -> JsonObject:
        run = await self.kube.get(namespaced_path("agentrun.dev/v1alpha1", "agentruns", NAMESPACE, RUN))
        if run is None:
            raise DemoError(f"the AgentRun {RUN} disappeared")
        status: JsonObject = run.get("status") or {}
        return status

    async def runner_pods(self) -> list[JsonObject]:
        selector = f"?labelSelector=batch.kubernetes.io/job-name%3D{RUN}-runner"
        pods = await self.kube.list(namespaced_path("v1", "pods", NAMESPACE) + selector)
        return sorted(pods, key=lambda pod: str(pod["metadata"].get("creationTimestamp", "")))

    async def run_events(self) -> list[JsonObject]:
        events = await self.kube.list(namespaced_path("v1", "events", NAMESPACE))
        return [e for e in events if (e.get("involvedObject") or {}).get("name") == RUN]

    async def apply_examples(self) -> None:
        model = self.cluster.model
        manifest = point_at_model(yaml.safe_load((EXAMPLES / f"{RUN}.yaml").read_text()), model)
        if model.real:
            say("  The API key comes from OPENAI_API_KEY (on kubectl's stdin, never printed or in argv):")
            await self.kubectl.run(
                "create", "secret", "generic", "openai-api-key", "--from-file=api-key=/dev/stdin",
                stdin=model.api_key.encode(),
            )  # fmt: skip
        else:
            await self.kubectl.run("apply", "-f", str((EXAMPLES / "secret.yaml").relative_to(REPO_ROOT)))
        say(f"  examples/{RUN}.yaml is applied as it is, but for one field set on the way in (the file is not edited):")
        say(f"    spec.model.baseURL: {model.base_url}    # the example calls the public API by default")
        if model.real:
            say(f"    spec.model.name: {model.model}    # OPENAI_MODEL")
        await self.kubectl.run(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(manifest, sort_keys=False).encode(),
            shown_as=f"kubectl apply -f -    # stdin: examples/{RUN}.yaml with spec.model.baseURL set",
        )

    async def kill_runner_mid_run(self) -> str | None:
        """SIGKILL the runner once a checkpoint at KILL_AT_ITERATION exists; the killed pod's name."""

        async def checkpointed() -> JsonObject | None:
            status = await self.status()
            if status.get("phase") in TERMINAL_PHASES:
                return status
            return status if (status.get("lastCheckpoint") or {}).get("iteration", 0) >= KILL_AT_ITERATION else None

        status = await wait_for(checkpointed, f"a checkpoint at iteration {KILL_AT_ITERATION}")
        if status.get("phase") in TERMINAL_PHASES:
            say(f"  (the run ended {status['phase']} before iteration {KILL_AT_ITERATION}: nothing to kill)")
            return None
        running = [p for p in await self.runner_pods() if p["status"].get("phase") == "Running"]
        if not running:
            raise DemoError("no Running runner pod to kill")
        pod: str = running[-1]["metadata"]["name"]
        runtime = self.cluster.node.runtime(NAMESPACE, pod)
        pid = runtime.process.pid if runtime.process is not None else "?"
        say(
            f"\n  chaos: SIGKILL to runner pod {pod} (pid {pid}), checkpointed at iteration "
            f"{status['lastCheckpoint']['iteration']}: no SIGTERM, no chance to save anything"
        )
        self.cluster.node.kill_pod_process(NAMESPACE, pod)
        return pod

    async def show_resume(self, killed: str) -> None:
        async def replacement() -> JsonObject | None:
            pods = await self.runner_pods()
            fresh = [p for p in pods if p["metadata"]["name"] != killed and p["status"].get("phase") == "Running"]
            return fresh[-1] if fresh else None

        exit_code = await wait_for(
            lambda: _now(lambda: self.cluster.node.runtime(NAMESPACE, killed).exit_code), "the killed pod to end"
        )
        say(f"  pod {killed} ended with exit code {exit_code} (128 + SIGKILL)")
        pod = await wait_for(replacement, "a replacement runner pod")
        say(f"  the real Job controller started a replacement pod: {pod['metadata']['name']}")
        await self.kubectl.run("get", "pods", "-l", f"batch.kubernetes.io/job-name={RUN}-runner", "-o", "wide")

        async def resumed() -> JsonObject | None:
            found = [e for e in await self.run_events() if e.get("reason") == "Resumed"]
            return found[-1] if found else None

        event = await wait_for(resumed, "the Resumed Event")
        say(f"  Event {event['reason']}: {event['message']}")

    async def wait_for_end(self) -> JsonObject:
        async def ended() -> JsonObject | None:
            status = await self.status()
            return status if status.get("phase") in TERMINAL_PHASES else None

        status = await wait_for(ended, f"the run {RUN} to end")
        if status["phase"] != "Succeeded":
            raise DemoError(f"the run ended {status['phase']} ({status.get('reason')}): {status.get('message')}")
        return status

    async def follow_stream(self) -> None:
        """Read the run's SSE stream from its runner pod; after a pod loss, reconnect to the replacement
        with Last-Event-ID, as the stream gateway does, until the `finished` event."""

        async def token() -> str | None:
            secret = await self.kube.get(namespaced_path("v1", "secrets", NAMESPACE, f"{RUN}-stream-token"))
            return base64.b64decode(secret["data"]["token"]).decode() if secret else None

        bearer = await wait_for(token, f"the Secret {RUN}-stream-token")
        last_id: int | None = None
        lost: str | None = None
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=60.0)) as client:
            while True:
                pods = [p for p in await self.runner_pods() if p["status"].get("phase") == "Running"]
                if not pods or not pods[-1]["status"].get("podIP") or pods[-1]["metadata"]["name"] == lost:
                    await asyncio.sleep(0.1)
                    continue
                pod = pods[-1]["metadata"]["name"]
                url = f"http://{pods[-1]['status']['podIP']}:{STREAM_PORT}/events"
                headers = {"Authorization": f"Bearer {bearer}"}
                if last_id is not None:
                    headers["Last-Event-ID"] = str(last_id)
                try:
                    async with aconnect_sse(client, "GET", url, headers=headers) as source:
                        if source.response.status_code == 401:
                            raise DemoError(f"the runner's stream refused the token of {RUN}-stream-token (401)")
                        resumed = f" with Last-Event-ID: {last_id}" if last_id is not None else ""
                        say(f"{STREAM_PREFIX}connected to {url} (pod {pod}){resumed}")
                        async for sse in dispatched_events(source):
                            if not sse.id:
                                continue
                            last_id = int(sse.id)
                            self.stream_events.append(StreamEvent(last_id, sse.event, sse.data, pod))
                            if sse.event == "finished":
                                say(f"{STREAM_PREFIX}`finished` received (id {last_id}); stream closed")
                                return
                except (httpx.TransportError, SSEError):
                    pass  # not listening yet, or the pod died: find the current pod again
                if self.stream_events and self.stream_events[-1].pod == pod and lost != pod:
                    lost = pod
                    say(
                        f"{STREAM_PREFIX}connection to pod {pod} lost after event id {last_id}; waiting for the next pod"
                    )
                await asyncio.sleep(0.1)

    async def show_outcome(self, status: JsonObject) -> None:
        section("The run's status, conditions and Events")
        await self.kubectl.run("get", "agentruns")
        await self.kubectl.run("wait", "--for=condition=Complete", f"agentrun/{RUN}", "--timeout=30s")
        full = await self.kubectl.run(
            "get", "agentrun", RUN, "-o", "yaml", shown_as=f"kubectl get agentrun {RUN} -o yaml    # its status:", show_output=False
        )  # fmt: skip
        in_status = False
        for line in full.splitlines():
            in_status = in_status or line.startswith("status:")
            if in_status:
                say(f"    {line}")
        await self.kubectl.run(
            "get",
            "events",
            f"--field-selector=involvedObject.name={RUN}",
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
        )

        pods = await self.runner_pods()
        if pods:
            last = pods[-1]["metadata"]["name"]
            say("  The last runner's output, through the API server from the node (kubectl logs):")
            await self.kubectl.run("logs", last, "--tail=6")

        section("The result")
        result = status.get("result") or {}
        say(f"  status.result.summary: {result.get('summary', '')}")
        say(f"  status.result.ref:     {result.get('ref', '')} ({result.get('bytes', 0)} bytes)")
        ref = str(result.get("ref", ""))
        if self.kubectl.has_plugin("agentrun"):
            say("  The full result, through the project's kubectl plugin (it reads the checkpoint store):")
            await self.kubectl.run("agentrun", "result", RUN)
        elif ref.startswith("configmap/") and "#" in ref:
            name, key = ref.removeprefix("configmap/").split("#", 1)
            say("  The full result, from the checkpoint store:")
            await self.kubectl.run("get", "configmap", name, "-o", f"jsonpath={{.data.{key}}}")
        say()

        section("The stream's events (SSE from the runner pods, ids only increase across the kill)")
        for event in self.stream_events:
            say(f"  id: {event.id:<6} event: {event.event:<12} pod: {event.pod}  data: {_short(event.data)}")


def _short(data: str, limit: int = 70) -> str:
    with contextlib.suppress(ValueError):
        data = json.dumps(json.loads(data), separators=(",", ":"))
    return data if len(data) <= limit else data[: limit - 3] + "..."


async def _now(probe: Callable[[], T | None]) -> T | None:
    """A synchronous check as wait_for's probe."""
    return probe()


def preflight() -> Path:
    """What the demo needs from this machine, checked before anything starts; kubectl's path."""
    binary = kubectl_binary()
    try:
        find_binaries()
    except BinariesMissingError as error:
        raise DemoError(str(error)) from None
    try:
        check_mount_namespaces()
    except MountNamespaceUnavailableError as error:
        raise DemoError(
            f"{error}.\nThe demo runs runner pods as local processes in private mount namespaces, which needs "
            "root (or CAP_SYS_ADMIN) and util-linux `unshare`: run it as root, e.g. `sudo make demo`, or in a "
            "container started with --privileged."
        ) from None
    return binary


async def demo(state_dir: Path, binary: Path) -> None:
    started = time.monotonic()
    # SIGTERM stops the demo as Ctrl-C does: cancelled, every process it started is stopped on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    section("Starting a Kubernetes control plane and a node, installing the chart")
    script = stepwise_script(STEPS, delay=ANSWER_DELAY_SECONDS)
    testbed = KubeTestbed(state_dir / "testbed")
    await asyncio.to_thread(testbed.start)
    try:
        await run_on(testbed, state_dir, binary, script, started)
    finally:
        await asyncio.to_thread(testbed.stop)


async def run_on(testbed: KubeTestbed, state_dir: Path, binary: Path, script: Script, started: float) -> None:
    async with LocalCluster(
        testbed, state_dir, namespace=NAMESPACE, model_script=script, start_operator=False
    ) as cluster:
        # The platform policy admits the model's host (the scripted server on 127.0.0.1, or OPENAI_BASE_URL's).
        values = ground_values(policy={"allowedModelHosts": [str(httpx.URL(cluster.model.base_url).host)]})
        release = ChartRelease(testbed)
        installed = await asyncio.to_thread(release.install, values)
        operator = await release.wait_for_leader()
        say(f"  control plane  {testbed.control_plane.url}  (KUBECONFIG={cluster.kubeconfig_path})")
        say(
            f"  chart          release {installed['name']} revision {installed['revision']} in namespace "
            f"{release.namespace}; operator pod {operator}"
        )
        say(f"  model          {cluster.model.base_url} ({'real' if cluster.model.real else 'scripted'})")
        kubectl = Kubectl(binary, cluster.kubeconfig_path)
        await kubectl.run("version")
        await kubectl.run("get", "nodes", "-o", "wide")
        watch = Watch(kubectl)
        async with KubeClient(str(cluster.kubeconfig_path)) as kube:
            run = Demo(cluster, kube, kubectl)
            stream: asyncio.Task[None] | None = None
            try:
                section("Applying the example with kubectl, and watching it")
                await watch.start()
                await run.apply_examples()
                stream = asyncio.create_task(run.follow_stream())
                killed = await run.kill_runner_mid_run()
                if killed is not None:
                    await run.show_resume(killed)
                status = await run.wait_for_end()
                try:
                    await asyncio.wait_for(stream, STEP_TIMEOUT_SECONDS)
                except TimeoutError:
                    raise DemoError("the run's event stream never delivered its `finished` event") from None
                # The watch's own Succeeded row, before the watch stops.
                await wait_for(
                    lambda: _now(lambda: "Succeeded" in watch.phases() or None), "the watch to show Succeeded"
                )
            finally:
                await watch.stop()
                if stream is not None and not stream.done():
                    stream.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await stream
            await run.show_outcome(status)
            pods = [pod["metadata"]["name"] for pod in await run.runner_pods()]
        section("Summary")
        ids = [event.id for event in run.stream_events]
        say(f"  phases seen by kubectl get agentruns -w: {' -> '.join(watch.phases())}")
        say(f"  runner pods: {', '.join(pods)}")
        id_range = f", ids {ids[0]}..{ids[-1]}" if ids else ""
        say(f"  restarts: {status.get('restarts', 0)}; stream events: {len(ids)}{id_range}")
        say(f"  emulated: the kubelet (the node agent){'' if cluster.model.real else ', the model'}")
        if container_runtime() == "runc":
            say("  containers: from their images (make images) under runc, their securityContext enforced")
        else:
            say(f"  containers: this checkout's code as local processes ({CONTAINER_RUNTIME_ENV}=runc runs the images)")
        say("  stopping the node's pods (the operator's too), the control plane and the model server")
    how = "after a SIGKILL, resumed from its checkpoint" if killed is not None else "(no kill: it ended first)"
    say(f"\nDemo finished in {time.monotonic() - started:.1f}s: {RUN} Succeeded {how}.")


def main() -> int:
    banner(bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("OPENAI_BASE_URL")))
    try:
        binary = preflight()
    except DemoError as error:
        say(f"\ndemo FAILED: {error}")
        return 1
    state_dir = Path(tempfile.mkdtemp(prefix="agentrun-demo-"))
    try:
        asyncio.run(demo(state_dir, binary))
    except DemoError as error:
        say(f"\ndemo FAILED: {error}")
        say(
            f"logs kept in {state_dir} (testbed/control-plane/logs/, testbed/node/logs/: the operator's and the runners')"
        )
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        say(f"\ndemo interrupted; every process it started is stopped; logs kept in {state_dir}")
        return 130
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
