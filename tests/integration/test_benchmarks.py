"""Every benchmark of `make bench` runs in its quick mode and prints its figures (no timing is asserted).

The benchmarks that need an API server start a real control plane of their own (tests.harness.testbed) and
print the Kubernetes version they ran on; one test per benchmark, so they run one after another, as `make bench`
runs them, and no two control planes share the machine's CPUs.
"""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.harness.ground_check import require_real_ground
from tests.harness.source_roots import pythonpath

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Each benchmark with the labels of the figures it must print.
ON_KUBERNETES = "on Kubernetes v"
FIGURES = {
    "reconcile_scale.py": (
        ON_KUBERNETES,
        "create -> Job p50",
        "create -> Job p99",
        "all Jobs exist after",
        "API server CPU (s)",
        "operator RSS",
        "KiB per live run",
    ),
    "operator_api_requests.py": (
        ON_KUBERNETES,
        "requests per run:",
        "status writes:",
        "minimum the run needs:",
        "excess over the minimum:",
    ),
    "runner_overhead.py": (
        "ConfigMap store on Kubernetes v",
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
        ON_KUBERNETES,
        '"lag_ms_p99"',
        '"every_reader_got_every_event": true',
        '"gateway_rss_mib_with_readers"',
        '"runner_iterations_per_second_0_readers"',
        '"runner_iterations_per_second_5_readers"',
        '"runner_rate_ratio"',
        '"runner_every_reader_got_the_runners_log": true',
    ),
    "throttle_pool.py": ("achieved rate", "fairness spread", "achieved/hidden limit", ON_KUBERNETES),
    "stream_log.py": ("latency p50", "ckpt writes", "before (", "now, flush 0.2 s (default)", " writes"),
    "runs_api.py": (ON_KUBERNETES, "202 latency, 10 concurrent submitters", "p99", "duplicates: 0"),
}


# The benchmarks that start a control plane (and its node agent) of their own.
ON_CONTROL_PLANE = {
    "reconcile_scale.py",
    "operator_api_requests.py",
    "runner_overhead.py",
    "gateway_fanout.py",
    "throttle_pool.py",
    "runs_api.py",
}
QUICK_TIMEOUT_SECONDS = 240  # one benchmark's quick mode, its control plane's start and stop included


async def run_quick(script: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath(),
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
        output, _ = await asyncio.wait_for(process.communicate(), QUICK_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.timeout(QUICK_TIMEOUT_SECONDS + 30)
@pytest.mark.parametrize("script", list(FIGURES))
async def test_benchmark_prints_its_figures_in_quick_mode(script: str) -> None:
    if script in ON_CONTROL_PLANE:
        require_real_ground(f"{script}'s control plane")
    code, output = await run_quick(script)
    assert code == 0, f"{script} exited with {code}:\n{output[-3000:]}"
    missing = [label for label in FIGURES[script] if label not in output]
    assert not missing, f"{script} did not print {missing}:\n{output[-3000:]}"
