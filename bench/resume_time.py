"""Resume time: from a runner process's start to its first model call, after a crash at iteration N.

    python bench/resume_time.py [--iterations 500] [--trials 3] [--quick]

Runs the container's entrypoint (``python -m agentrun_runner``, PVC checkpoint store) against the
scripted model server, which answers at once with one tool call per turn. When the model has
answered N turns the process is SIGKILLed (a lost pod); a new process starts on the same
checkpoint, and the time from its start (process spawn, interpreter and imports included) to its
first model request is the resume time. For comparison, the same figure for a fresh run
(no checkpoint) is printed: the difference is what restoring the checkpoint costs. The runner's CPU
time up to that request is printed too (from /proc: steadier than wall time on a shared machine).

Conditions are the image's: the project's packages are compiled to bytecode first (the runner
Dockerfile runs ``compileall`` at build; installed packages come compiled by pip), and the runner
runs with the image's environment for bytecode and TLS (read from runner_image/Dockerfile:
PYTHONDONTWRITEBYTECODE, SSL_CERT_FILE, SSL_CERT_DIR), so no run pays for or saves a compilation
and TLS contexts are built as in a pod. ``--host-tls`` keeps this machine's TLS settings instead.
"""

import argparse
import asyncio
import compileall
import logging
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "common"), str(ROOT / "runner_image"), str(ROOT)]

from tests.harness.model_server import Answer, ModelServer, by_turn, call  # noqa: E402
from tests.harness.runner import RunnerProcess, make_config, make_spec, runner_env  # noqa: E402

# What the image compiles at build (the runner Dockerfile's compileall of /opt/app).
IMAGE_PACKAGES = (
    ROOT / "api" / "agentrun_api",
    ROOT / "common" / "agentrun_common",
    ROOT / "runner_image" / "agentrun_runner",
)


# The runner image's environment that changes how fast a process starts (not its paths).
IMAGE_ENV_KEYS = ("PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def image_environment(keys: tuple[str, ...] = IMAGE_ENV_KEYS) -> dict[str, str]:
    """Those variables as the final stage of runner_image/Dockerfile sets them."""
    text = re.sub(r"\\\n", " ", (ROOT / "runner_image" / "Dockerfile").read_text())
    final = text[text.rindex("\nFROM ") :]
    found: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", final, re.MULTILINE):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            if key in keys:
                found[key] = value
    missing = set(keys) - set(found)
    assert not missing, f"runner_image/Dockerfile no longer sets {sorted(missing)}"
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (Linux scheduler statistics, nanoseconds)."""
    with open(f"/proc/{pid}/schedstat") as stats:
        return int(stats.read().split()[0]) / 1e9


async def first_call_after_start(model: ModelServer, env: dict[str, str]) -> tuple[RunnerProcess, float, float]:
    """Start the runner; seconds until the model server receives its first request, and the
    runner's CPU seconds by then."""
    before = len(model.requests)
    started = time.monotonic()
    runner = await RunnerProcess(env).start()
    assert runner.process is not None
    async with asyncio.timeout(60):
        while len(model.requests) == before:  # noqa: ASYNC110 - the model server has no arrival hook to await
            await asyncio.sleep(0.001)
    cpu = cpu_seconds(runner.process.pid)
    return runner, model.requests[before].received_at - started, cpu


async def trial(model: ModelServer, iterations: int, image_env: dict[str, str]) -> tuple[float, float, float, str]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        spec = make_spec(model.base_url, maxIterations=iterations * 2, maxExecutionTime="2h")
        env = runner_env(tmp, make_config(spec, tmp, progress_interval_seconds=2.0))
        env.update(image_env)
        runner, fresh, _ = await first_call_after_start(model, env)
        target = len(model.requests) - 1 + iterations
        async with asyncio.timeout(300):
            while len(model.requests) < target:  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.01)
        runner.kill()
        await runner.close()
        checkpoint_bytes = sum(f.stat().st_size for f in (tmp / "checkpoint").rglob("*") if f.is_file())
        resumed, resume, cpu = await first_call_after_start(model, env)
        line = (await resumed.wait_for_log(r"resum\w* from[^\n]*"))[0]
        resumed.kill()
        await resumed.close()
    return fresh, resume, cpu, f"{line.strip()[:80]} (checkpoint {checkpoint_bytes / 1024:.0f} KiB)"


async def main(iterations: int, trials: int, host_tls: bool) -> None:
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # a killed runner's dropped request is expected
    for package in IMAGE_PACKAGES:
        compileall.compile_dir(package, quiet=1)
    image_env = image_environment(("PYTHONDONTWRITEBYTECODE",) if host_tls else IMAGE_ENV_KEYS)
    shown = " ".join(f"{key}={shlex.quote(value)}" for key, value in image_env.items())
    print(
        f"bytecode compiled for {', '.join(p.name for p in IMAGE_PACKAGES)}; runner environment as in the image: {shown}"
    )
    script = by_turn([Answer(tool_calls=[call("list_files")])])  # never a final answer
    async with ModelServer(script) as model:
        fresh_times, resume_times, resume_cpu = [], [], []
        for number in range(1, trials + 1):
            fresh, resume, cpu, note = await trial(model, iterations, image_env)
            fresh_times.append(fresh)
            resume_times.append(resume)
            resume_cpu.append(cpu)
            print(
                f"  trial {number}: fresh start {fresh * 1000:.0f} ms, resume {resume * 1000:.0f} ms "
                f"(runner CPU {cpu * 1000:.0f} ms); {note}"
            )
    print(f"process start -> first model call, fresh run:           median {statistics.median(fresh_times):.2f} s")
    print(
        f"process start -> first model call, resumed at {iterations:>3}:     median {statistics.median(resume_times):.2f} s"
        f" (min {min(resume_times):.2f} s, max {max(resume_times):.2f} s)"
    )
    print(f"runner CPU time until that call, resumed:              median {statistics.median(resume_cpu):.2f} s")
    print(
        f"machine load (1, 5, 15 min): {', '.join(f'{load:.1f}' for load in os.getloadavg())} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="iterations before the crash")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 iterations, 1 trial: a smoke test of the benchmark")
    parser.add_argument(
        "--host-tls", action="store_true", help="keep this machine's TLS trust settings (not the image's)"
    )
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.iterations, arguments.trials = 20, 1
    asyncio.run(main(arguments.iterations, arguments.trials, arguments.host_tls))
