"""Every benchmark of `make bench` runs in its quick mode and prints its figures (no timing is asserted)."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Each benchmark with the labels of the figures it must print.
FIGURES = {
    "reconcile_scale.py": ("create -> Job p50", "create -> Job p99", "all Jobs exist after", "operator RSS"),
    "operator_api_requests.py": ("requests per run:", "status writes:"),
    "runner_overhead.py": (
        "runner time per iteration",
        "runner CPU time per iteration",
        "bytes per checkpoint write, PVC store",
        "ConfigMap store",
    ),
    "resume_time.py": (
        "resumed at",
        "fresh run",
        "runner CPU time until that call",
        "runner environment as in the image",
    ),
    "gateway_fanout.py": (
        '"lag_ms_p99"',
        '"every_reader_got_every_event": true',
        '"gateway_rss_mib_with_readers"',
        '"runner_iterations_per_second_0_readers"',
        '"runner_iterations_per_second_5_readers"',
        '"runner_rate_ratio"',
        '"runner_every_reader_got_the_runners_log": true',
    ),
    "throttle_pool.py": ("achieved rate", "fairness spread"),
}


async def run_quick(script: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("api", "operator", "runner_image", "gateway", ".")),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / script),
        "--quick",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 90)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def test_every_benchmark_prints_its_figures_in_quick_mode() -> None:
    results = await asyncio.gather(*(run_quick(script) for script in FIGURES))
    for (script, labels), (code, output) in zip(FIGURES.items(), results, strict=True):
        assert code == 0, f"{script} exited with {code}:\n{output[-3000:]}"
        missing = [label for label in labels if label not in output]
        assert not missing, f"{script} did not print {missing}:\n{output[-3000:]}"
