"""What each candidate Kubernetes client adds to a runner pod's start: its import time on top of what the
runner imports anyway.

    python bench/kube_client_import.py [--runs 7] [--path DIR]

Each measurement is a fresh interpreter that first imports the runner's other dependencies (aiohttp, pydantic,
openai, yaml), then times one import of the candidate; the median of ``--runs`` is printed. ``--path`` adds a
directory holding candidates that are not installed (``pip install --target DIR ...``); a candidate that cannot
be imported is reported as absent. The shared client (``agentrun_common.kube``) is the runner's choice.
"""

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALREADY_IMPORTED = "import aiohttp, pydantic, openai, yaml"
CANDIDATES = {
    "agentrun_common.kube (aiohttp, the shared client)": "import agentrun_common.kube",
    "kubernetes (official, sync; the runner's kubeconfig loader before)": "import kubernetes.client, kubernetes.config",
    "kubernetes_asyncio": "import kubernetes_asyncio.client, kubernetes_asyncio.config",
    "lightkube (httpx; with the core/v1 models the runner would use)": "import lightkube, lightkube.resources.core_v1",
    "kopf (the operator's framework)": "import kopf",
}
PROBE = """
import time
{before}
started = time.perf_counter()
{candidate}
print(time.perf_counter() - started)
"""


def measure(candidate: str, runs: int, env: dict[str, str]) -> float | None:
    seconds: list[float] = []
    for _ in range(runs):
        probe = PROBE.format(before=ALREADY_IMPORTED, candidate=candidate)
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return None
        seconds.append(float(done.stdout.strip()))
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--path", default="", help="a directory with candidates that are not installed")
    args = parser.parse_args()
    roots = [str(REPO / root) for root in ("api", "common", "runner_image")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(roots + ([args.path] if args.path else []))}
    print(f"import time on top of `{ALREADY_IMPORTED}`, median of {args.runs} fresh interpreters")
    for name, statement in CANDIDATES.items():
        seconds = measure(statement, args.runs, env)
        print(f"  {name:70s} " + ("absent" if seconds is None else f"{seconds * 1000:7.0f} ms"))


if __name__ == "__main__":
    main()
