"""Resume time: from a runner process's start to its first model call, after a crash at iteration N.

    python bench/resume_time.py [--iterations 500] [--trials 3] [--quick]

Runs the container's entrypoint (``python -m agentrun_runner``, PVC checkpoint store) against the
scripted model server, which answers at once with one tool call per turn. When the model has
answered N turns the process is SIGKILLed (a lost pod); a new process starts on the same
checkpoint, and the time from its start (process spawn, interpreter and imports included) to its
first model request is the resume time. For comparison, the same figure for a fresh run
(no checkpoint) is printed: the difference is what restoring the checkpoint costs.
"""

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "runner_image"), str(ROOT)]

from tests.harness.model_server import Answer, ModelServer, by_turn, call  # noqa: E402
from tests.harness.runner import RunnerProcess, make_config, make_spec, runner_env  # noqa: E402


async def first_call_after_start(model: ModelServer, env: dict[str, str]) -> tuple[RunnerProcess, float]:
    """Start the runner; seconds until the model server receives its first request."""
    before = len(model.requests)
    started = time.monotonic()
    runner = await RunnerProcess(env).start()
    async with asyncio.timeout(60):
        while len(model.requests) == before:  # noqa: ASYNC110 - the model server has no arrival hook to await
            await asyncio.sleep(0.002)
    return runner, model.requests[before].received_at - started


async def trial(model: ModelServer, iterations: int) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        spec = make_spec(model.base_url, maxIterations=iterations * 2, maxExecutionTime="2h")
        env = runner_env(tmp, make_config(spec, tmp, progress_interval_seconds=2.0))
        runner, fresh = await first_call_after_start(model, env)
        target = len(model.requests) - 1 + iterations
        async with asyncio.timeout(300):
            while len(model.requests) < target:  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.01)
        runner.kill()
        await runner.close()
        checkpoint_bytes = sum(f.stat().st_size for f in (tmp / "checkpoint").rglob("*") if f.is_file())
        resumed, resume = await first_call_after_start(model, env)
        line = (await resumed.wait_for_log(r"resum\w* from[^\n]*"))[0]
        resumed.kill()
        await resumed.close()
    return fresh, resume, f"{line.strip()[:80]} (checkpoint {checkpoint_bytes / 1024:.0f} KiB)"


async def main(iterations: int, trials: int) -> None:
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # a killed runner's dropped request is expected
    script = by_turn([Answer(tool_calls=[call("list_files")])])  # never a final answer
    async with ModelServer(script) as model:
        fresh_times, resume_times = [], []
        for number in range(1, trials + 1):
            fresh, resume, note = await trial(model, iterations)
            fresh_times.append(fresh)
            resume_times.append(resume)
            print(f"  trial {number}: fresh start {fresh * 1000:.0f} ms, resume {resume * 1000:.0f} ms; {note}")
    print(f"process start -> first model call, fresh run:           median {statistics.median(fresh_times):.2f} s")
    print(
        f"process start -> first model call, resumed at {iterations:>3}:     median {statistics.median(resume_times):.2f} s"
        f" (max {max(resume_times):.2f} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="iterations before the crash")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 iterations, 1 trial: a smoke test of the benchmark")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.iterations, arguments.trials = 20, 1
    asyncio.run(main(arguments.iterations, arguments.trials))
