"""Kubelet's container probes: startup, liveness and readiness, by httpGet, tcpSocket or exec.

As kubelet's prober does: nothing but the startup probe runs until it has succeeded; liveness and readiness then
run side by side, each every ``periodSeconds`` after ``initialDelaySeconds``. A result flips only after
``successThreshold`` successes or ``failureThreshold`` failures in a row. A failed startup or liveness probe kills
the container (kubelet then restarts it by the pod's restartPolicy); readiness decides the container's ``ready``,
so the EndpointSlice controller routes to the pod only while it passes. A container without a readiness probe
is ready once started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from tests.harness.nodeagent.kube import JsonObject

logger = logging.getLogger(__name__)

HTTP_HEADERS = {"User-Agent": "kube-probe/agentrun-node-agent", "Accept": "*/*"}


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    message: str = ""


def _port_number(port: int | str, container: JsonObject) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for entry in container.get("ports") or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container.get('name')!r}")


async def _http_get(action: JsonObject, host: str, container: JsonObject, timeout: float) -> ProbeResult:
    scheme = str(action.get("scheme") or "HTTP").lower()
    url_host = action.get("host") or host
    url = f"{scheme}://{url_host}:{_port_number(action['port'], container)}{action.get('path') or '/'}"
    headers = dict(HTTP_HEADERS)
    headers.update({header["name"]: header["value"] for header in action.get("httpHeaders") or []})
    # kubelet does not verify a probed pod's certificate.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers=headers, ssl=insecure if scheme == "https" else False, allow_redirects=False) as r,
        ):
            if 200 <= r.status < 400:
                return ProbeResult(True)
            return ProbeResult(False, f"HTTP probe failed with statuscode: {r.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return ProbeResult(False, f'Get "{url}": {error or type(error).__name__}')


async def _tcp_socket(action: JsonObject, host: str, container: JsonObject, timeout: float) -> ProbeResult:
    port = _port_number(action["port"], container)
    target = action.get("host") or host
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout)
    except (OSError, TimeoutError) as error:
        return ProbeResult(False, f"dial tcp {target}:{port}: {error or 'i/o timeout'}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True)


async def _exec(
    action: JsonObject, pid: int, env: Mapping[str, str], timeout: float, user: tuple[int, int] | None = None
) -> ProbeResult:
    """The command inside the container: its mount namespace (so it sees the pod's volumes) and its env, as the
    container's user and group when it has its own (the runc runtime)."""
    command = [str(part) for part in action.get("command") or []]
    if not command:
        return ProbeResult(False, "exec probe has no command")
    try:
        process = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--target={pid}",
            "--mount",
            *([f"--setuid={user[0]}", f"--setgid={user[1]}"] if user else []),
            "--",
            *command,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        return ProbeResult(False, f"exec probe could not start: {error}")
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return ProbeResult(False, f"command {command} timed out after {timeout:g}s")
    if process.returncode == 0:
        return ProbeResult(True)
    return ProbeResult(
        False, f"command {command} exited {process.returncode}: {output.decode(errors='replace')[-300:]}"
    )


class ContainerProbes:
    """The probes of one run of one container. ``on_ready(bool)`` and ``on_started()`` report what kubelet
    writes into the container status; ``on_failed(message, probe)`` asks for the container to be killed."""

    def __init__(
        self,
        container: JsonObject,
        *,
        host: str,
        pid: int,
        env: Mapping[str, str],
        user: tuple[int, int] | None = None,
        on_started: Callable[[], None],
        on_ready: Callable[[bool], None],
        on_failed: Callable[[str, JsonObject], None],
    ) -> None:
        self._container = container
        self._host = host
        self._pid = pid
        self._env = env
        self._user = user
        self._on_started = on_started
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._task: asyncio.Task[None] | None = None

    @property
    def has_startup(self) -> bool:
        return bool(self._container.get("startupProbe"))

    @property
    def has_readiness(self) -> bool:
        return bool(self._container.get("readinessProbe"))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"probes of {self._container.get('name')}")

    async def stop(self) -> None:
        """Cancel the probes, again until they end: Python 3.11's ``wait_for`` swallows a cancellation that arrives
        as the awaited command finishes (an exec probe's), and the probe loop would go on."""
        if self._task is not None:
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def probe_once(self, probe: JsonObject) -> ProbeResult:
        timeout = float(probe.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in probe:
                return await _http_get(probe["httpGet"], self._host, self._container, timeout)
            if "tcpSocket" in probe:
                return await _tcp_socket(probe["tcpSocket"], self._host, self._container, timeout)
            if "exec" in probe:
                return await _exec(probe["exec"], self._pid, self._env, timeout, self._user)
        except ValueError as error:
            return ProbeResult(False, str(error))
        kinds = sorted(set(probe) & {"grpc"}) or sorted(probe)
        return ProbeResult(False, f"probe handler {kinds} is not run by the node agent")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        startup = self._container.get("startupProbe")
        if startup and not await self._startup(startup, started_at):
            return
        self._on_started()
        if not self.has_readiness:
            self._on_ready(True)
        # Liveness and readiness start counting their initial delay from the container's start.
        await asyncio.gather(self._readiness(started_at), self._liveness(started_at))

    async def _wait_initial_delay(self, probe: JsonObject, started_at: float) -> None:
        delay = started_at + float(probe.get("initialDelaySeconds") or 0) - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _startup(self, probe: JsonObject, started_at: float) -> bool:
        """True once the startup probe succeeds; False (the container is to be killed) after failureThreshold
        failures in a row."""
        await self._wait_initial_delay(probe, started_at)
        failures = 0
        threshold = int(probe.get("failureThreshold") or 3)
        while True:
            result = await self.probe_once(probe)
            if result.success:
                return True
            failures += 1
            if failures >= threshold:
                self._on_failed(f"Startup probe failed: {result.message}", probe)
                return False
            await asyncio.sleep(float(probe.get("periodSeconds") or 10))

    async def _readiness(self, started_at: float) -> None:
        probe = self._container.get("readinessProbe")
        if not probe:
            return
        await self._wait_initial_delay(probe, started_at)
        ready: bool | None = None
        successes = failures = 0
        while True:
            result = await self.probe_once(probe)
            successes, failures = (successes + 1, 0) if result.success else (0, failures + 1)
            if successes >= int(probe.get("successThreshold") or 1) and ready is not True:
                ready = True
                self._on_ready(True)
            elif failures >= int(probe.get("failureThreshold") or 3) and ready is not False:
                if ready is not None:
                    logger.info("container %s: readiness probe failed: %s", self._container.get("name"), result.message)
                ready = False
                self._on_ready(False)
            await asyncio.sleep(float(probe.get("periodSeconds") or 10))

    async def _liveness(self, started_at: float) -> None:
        probe = self._container.get("livenessProbe")
        if not probe:
            return
        await self._wait_initial_delay(probe, started_at)
        failures = 0
        while True:
            result = await self.probe_once(probe)
            failures = 0 if result.success else failures + 1
            if failures >= int(probe.get("failureThreshold") or 3):
                self._on_failed(f"Liveness probe failed: {result.message}", probe)
                return
            await asyncio.sleep(float(probe.get("periodSeconds") or 10))
