"""Relay lag and memory of the stream gateway with many readers on one run.

Starts the emulated Kubernetes API server and a fake runner in this process, the gateway as its
own process (`python -m agentrun_gateway`, so its memory is measured alone), and READERS SSE readers.
The runner emits EVENTS events at RATE per second, each stamped with its emit time; every reader
records when each event arrived. Prints p50/p99/max relay lag over all readers and the gateway's
resident memory (VmRSS) before the readers connect and while all of them are connected.

    python bench/gateway_fanout.py [--readers 100] [--events 500] [--rate 100]

Everything listens on 127.0.0.1; the run stops by itself (bounded by the event count and timeouts).
"""

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / part) for part in ("api", "operator", "runner_image", "gateway"))]

from tests.harness.apiserver import EmulatedApiServer  # noqa: E402
from tests.harness.fake_stream_runner import FakeStreamRunner  # noqa: E402

TOKEN = "bench-stream-token"
NAMESPACE, RUN = "bench", "fanout"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _reader(session: aiohttp.ClientSession, url: str, lags: list[float], connected: list[int]) -> int:
    received = 0
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200, response.status
        connected.append(1)
        buffer = b""
        async for chunk in response.content.iter_any():
            now = time.monotonic()
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
                if not data:
                    continue
                payload = json.loads(data[0])
                if "t" in payload:
                    lags.append(now - payload["t"])
                    received += 1
                if b"event: finished" in block:
                    return received
    return received


async def main(readers: int, events: int, rate: float) -> dict[str, Any]:
    async with EmulatedApiServer([ROOT / "crds" / "agentruns.agentrun.dev.yaml"]) as kube:
        store = kube.store
        store.create(store.resource("namespaces"), None, {"metadata": {"name": NAMESPACE}})
        store.create(
            store.resource("secrets"),
            NAMESPACE,
            {"metadata": {"name": f"{RUN}-stream-token"}, "data": {"token": base64.b64encode(TOKEN.encode()).decode()}},
        )
        spec = {
            "instructions": "Benchmark.",
            "input": "Stream.",
            "model": {"name": "bench"},
            "maxExecutionTime": "1h",
            "maxIterations": 10,
        }
        store.create(store.resource("agentruns"), NAMESPACE, {"metadata": {"name": RUN}, "spec": spec})
        patch = {"status": {"phase": "Running"}}
        store.patch(
            store.resource("agentruns"), NAMESPACE, RUN, "application/merge-patch+json", patch, subresource="status"
        )
        runner = FakeStreamRunner(TOKEN, heartbeat_seconds=15)
        await runner.start()
        port = _free_port()
        env = {
            **os.environ,
            "AGENTRUN_GATEWAY_HOST": "127.0.0.1",
            "AGENTRUN_GATEWAY_PORT": str(port),
            "AGENTRUN_GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{runner.port}/events?run={{namespace}}/{{name}}",
            "AGENTRUN_GATEWAY_KUBE_API_URL": str(kube.url),
            "AGENTRUN_GATEWAY_KUBE_TOKEN_FILE": "",
            "AGENTRUN_GATEWAY_KUBE_CA_FILE": "",
            "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("api", "operator", "runner_image", "gateway")),
        }
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentrun_gateway", env=env, stderr=asyncio.subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}/runs/{NAMESPACE}/{RUN}/events"
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
                for _ in range(150):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as health:
                            if health.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
                rss_idle = _rss_mib(gateway.pid)
                lags: list[float] = []
                connected: list[int] = []
                tasks = [asyncio.create_task(_reader(session, url, lags, connected)) for _ in range(readers)]
                await runner.emit("iteration", {"warmup": True})
                for _ in range(600):  # wait up to 30 s for every reader to be connected
                    if len(connected) >= readers:
                        break
                    await asyncio.sleep(0.05)
                rss_peak = 0.0
                for index in range(events):
                    await runner.emit("token", {"n": index, "t": time.monotonic()})
                    if index % 50 == 0:
                        rss_peak = max(rss_peak, _rss_mib(gateway.pid))
                    await asyncio.sleep(1 / rate)
                rss_peak = max(rss_peak, _rss_mib(gateway.pid))
                await runner.emit("finished", {"phase": "Succeeded"})
                counts = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            gateway.terminate()
            await gateway.wait()
            await runner.kill()
    lags.sort()
    return {
        "readers": readers,
        "events": events,
        "rate_per_second": rate,
        "every_reader_got_every_event": all(count == events for count in counts),
        "upstream_connections": runner.connections,
        "lag_ms_p50": round(statistics.median(lags) * 1000, 2),
        "lag_ms_p99": round(lags[int(len(lags) * 0.99) - 1] * 1000, 2),
        "lag_ms_max": round(lags[-1] * 1000, 2),
        "gateway_rss_mib_idle": round(rss_idle, 1),
        "gateway_rss_mib_with_readers": round(rss_peak, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--quick", action="store_true", help="5 readers, 20 events: a smoke test of the benchmark")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.readers, arguments.events = 5, 20
    print(json.dumps(asyncio.run(main(arguments.readers, arguments.events, arguments.rate)), indent=2))
