"""What binding the stream to the checkpoint log costs: token latency and checkpoint writes per run.

    python bench/stream_log.py [--tokens 300] [--trials 3] [--baseline-ref 485962d] [--quick]

Runs the container's entrypoint (``python -m agentrun_runner``, PVC checkpoint store) against the
scripted model server, which streams one answer of ``--tokens`` words, a chunk every 10 ms (100
tokens/s). A reader follows the runner's SSE stream. For every token the benchmark takes the time
the model server wrote its chunk and the time the reader received its event (one clock: both are in
this process): the difference is the token's latency through the runner. It also counts the
checkpoint records the run wrote and their bytes (decoded from the log file).

Variants: the current runner with event flush intervals of 0.05 s, 0.2 s (the default) and 0.5 s;
and, as "before", the runner of ``--baseline-ref`` (default: the last commit whose runner showed an
event once its id was reserved, not once it was written), exported with ``git archive``. Ratios are
against that baseline. A ConfigMap store pays the same number of writes, each an API request
(bench/runner_overhead.py measures their size).
"""

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "common"), str(ROOT / "runner_image"), str(ROOT)]

import httpx  # noqa: E402
from aiohttp import web  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402
from tests.harness.model_server import Answer, ModelServer, by_turn  # noqa: E402
from tests.harness.runner import STREAM_TOKEN, RunnerProcess, make_config, make_spec, runner_env  # noqa: E402
from tests.harness.sse_client import dispatched_events  # noqa: E402

from agentrun_api.contract import RunnerConfig  # noqa: E402
from agentrun_common.eventlog.records import decode_next  # noqa: E402

BASELINE_REF = "485962d"
CHUNK_SECONDS = 0.01
_WORD = re.compile(rb'"content": "(w\d+) "')
# When the model server wrote each word's chunk (the time this process handed it to the socket).
sent_at: dict[str, float] = {}


def record_chunk_writes() -> None:
    """Stamp the model server's chunk writes: the start of each token's trip through the runner."""
    original: Callable[[web.StreamResponse, bytes], Awaitable[None]] = web.StreamResponse.write

    async def write(self: web.StreamResponse, data: Any) -> None:
        match = _WORD.search(bytes(data))
        if match:
            sent_at[match[1].decode()] = time.monotonic()
        await original(self, data)

    web.StreamResponse.write = write  # type: ignore[method-assign]


@dataclass
class Trial:
    latencies: list[float]  # seconds per token, chunk written -> event received
    records: int
    record_bytes: int
    seconds: float


def checkpoint_records(log: Path) -> tuple[int, int]:
    data = log.read_bytes()
    count, offset = 0, 0
    while offset < len(data):
        _, offset = decode_next(data, offset)
        count += 1
    return count, len(data)


def export(ref: str, into: Path) -> Path:
    """The runner's source roots at ``ref`` (api, common, runner_image)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "api", "common", "runner_image"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def trial(model: ModelServer, tokens: int, flush: float | None, source: Path | None) -> Trial:
    sent_at.clear()
    with tempfile.TemporaryDirectory(prefix="bench-stream-log-") as tmp_name:
        tmp = Path(tmp_name)
        spec = make_spec(model.base_url, streaming={"enabled": True, "heartbeatInterval": "5s"}, model={"stream": True})
        config = make_config(spec, tmp)
        extra = {"AGENTRUN_RUNNER_EVENT_FLUSH_SECONDS": str(flush)} if flush is not None else {}
        env = runner_env(tmp, config, extra)
        if source is not None:
            env["PYTHONPATH"] = ":".join(str(source / part) for part in ("api", "common", "runner_image"))
            drop_unset_fields(Path(env["AGENTRUN_CONFIG"]))
        started = time.monotonic()
        runner = await RunnerProcess(env).start()
        received: dict[str, float] = {}
        port = await runner.stream_port()
        async with (
            httpx.AsyncClient(timeout=30) as client,
            aconnect_sse(
                client, "GET", f"http://127.0.0.1:{port}/events", headers={"Authorization": f"Bearer {STREAM_TOKEN}"}
            ) as stream,
        ):
            async for event in dispatched_events(stream):
                if event.event == "token":
                    received[event.json()["text"].strip()] = time.monotonic()
                if event.event == "finished":
                    break
        await runner.wait()
        seconds = time.monotonic() - started
        records, size = checkpoint_records(Path(config.checkpoint.mount_path) / "checkpoint.log")
    latencies = [received[word] - sent_at[word] for word in received if word in sent_at]
    assert len(latencies) == tokens, f"{len(latencies)} of {tokens} tokens measured"
    return Trial(latencies, records, size, seconds)


def drop_unset_fields(config_path: Path) -> None:
    """Fields added since the baseline are at their defaults in its runs: leave out every field at its default,
    as the baseline's stricter models demand (they default the fields they know alike)."""
    config = RunnerConfig.model_validate_json(config_path.read_text())
    config_path.write_text(config.model_dump_json(by_alias=True, exclude_defaults=True))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the 'before' runner; '' skips it")
    parser.add_argument("--quick", action="store_true", help="50 tokens, 1 trial: a smoke test of the benchmark")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.trials = 50, 1
    record_chunk_writes()
    answer = Answer(content=" ".join(f"w{i}" for i in range(args.tokens)), chunk_delay=CHUNK_SECONDS)
    variants: list[tuple[str, float | None, bool]] = [
        ("now, flush 0.05 s", 0.05, False),
        ("now, flush 0.2 s (default)", 0.2, False),
        ("now, flush 0.5 s", 0.5, False),
    ]
    if args.baseline_ref:
        variants.insert(0, (f"before ({args.baseline_ref}: shown once reserved)", None, True))
    results: dict[str, list[Trial]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stream-log-baseline-") as baseline_dir:
        baseline = export(args.baseline_ref, Path(baseline_dir)) if args.baseline_ref else None
        async with ModelServer(by_turn([answer])) as model:
            for _ in range(args.trials):  # interleaved, so load on a shared machine hits every variant alike
                for name, flush, before in variants:
                    results.setdefault(name, []).append(
                        await trial(model, args.tokens, flush, baseline if before else None)
                    )

    print(
        f"one streamed answer of {args.tokens} tokens, a chunk every {CHUNK_SECONDS * 1000:.0f} ms; {args.trials} trial(s)"
    )
    print(f"{'variant':<44} {'latency p50':>12} {'p95':>9} {'max':>9} {'ckpt writes':>12} {'bytes':>9}")
    reference: tuple[float, float] | None = None
    for name, trials in results.items():
        latencies = [value for t in trials for value in t.latencies]
        p50, p95 = quantile(latencies, 0.5), quantile(latencies, 0.95)
        writes = statistics.median(t.records for t in trials)
        size = statistics.median(t.record_bytes for t in trials)
        ratio = ""
        if reference is None:
            reference = (p50, writes)
        else:
            ratio = f"   x{p50 / reference[0]:.1f} latency, x{writes / reference[1]:.1f} writes"
        print(
            f"{name:<44} {p50 * 1000:9.1f} ms {p95 * 1000:6.1f} ms {max(latencies) * 1000:6.1f} ms"
            f" {writes:12.0f} {size:9.0f}{ratio}"
        )


if __name__ == "__main__":
    asyncio.run(main())
