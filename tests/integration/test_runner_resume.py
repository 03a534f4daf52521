"""Pod loss: the runner process is killed (SIGKILL) at seeded random points and restarted, as the
Job would replace its pod. It must end with the same messages and result as an uninterrupted run,
and never run a logged tool call again. SIGTERM checkpoints and exits resumable.

The runner runs as the container's entrypoint, ``python -m agentrun_runner``, in a subprocess.
"""

import asyncio
import random
import shutil
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentrun_api.contract import EXIT_OUTCOME_RECORDED, PROGRESS_KEY, Outcome, ProgressReport, RunnerConfig
from agentrun_runner.state import RunState
from tests.harness.model_server import Answer, ModelServer, by_turn, call, research_script
from tests.harness.run_identity import list_configmaps, provision_run
from tests.harness.runner import (
    RunnerProcess,
    ToolServer,
    load_configmap_state,
    load_state,
    make_config,
    make_spec,
    read_progress,
    run_in_process,
    runner_env,
)
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

EXIT_SIGTERM = 143
StateLoader = Callable[[], Coroutine[Any, Any, RunState]]


def final_view(state: RunState) -> dict[str, Any]:
    """What must not depend on interruptions: the conversation, the result, tool outputs, files."""
    return {
        "messages": state.messages,
        "result": state.result,
        "tools": {key: (r.name, r.arguments, r.output, r.ok) for key, r in state.tool_log.items()},
        "files": state.files,
        "outcome": state.counters.outcome,
        "step": state.counters.step,
    }


@dataclass
class Kills:
    mid_run: int = 0  # kills after which the store held a checkpoint of an unfinished run
    # For each kill: how often each logged call had reached the tool server by then.
    logged_deliveries: list[dict[str, int]] = field(default_factory=list)


async def runner_working_for(env: dict[str, str], seconds: float) -> RunnerProcess:
    """A runner process that has been working for `seconds` since it logged its start (its first step)."""
    process = await RunnerProcess(env).start()
    await process.wait_for_log(r"starting at iteration")
    await asyncio.sleep(seconds)
    return process


async def run_with_kills(
    env: dict[str, str], workspace: Path, load: StateLoader, tools: ToolServer, seed: int, kills: int
) -> Kills:
    """Kill the runner ``kills`` times at seeded random points, restarting it each time on a fresh
    workspace (as a new pod would get), then let it finish."""
    rng = random.Random(seed)
    seen = Kills()
    for _ in range(kills):
        process = await runner_working_for(env, rng.uniform(0.1, 1.4))
        process.kill()
        await process.wait()
        state = await load()
        if state.records and state.counters.outcome is None:
            seen.mid_run += 1
        seen.logged_deliveries.append({key: tools.deliveries[key] for key in state.tool_log})
        shutil.rmtree(workspace, ignore_errors=True)
    final = await RunnerProcess(env).start()
    assert await final.wait() == EXIT_OUTCOME_RECORDED, final.output
    return seen


def assert_no_logged_call_repeated(kills: Kills, deliveries: Counter[str]) -> None:
    for logged in kills.logged_deliveries:
        for key, count in logged.items():
            assert deliveries[key] == count, f"{key} reached the tool server again after it was logged"


async def uninterrupted(config: RunnerConfig, tmp_path: Path) -> RunState:
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_config = config.model_copy(
        update={
            "checkpoint": config.checkpoint.model_copy(
                update={"store": "PersistentVolumeClaim", "mount_path": str(reference / "checkpoint")}
            ),
            "workspace_path": str(reference / "workspace"),
        }
    )
    run = await run_in_process(ref_config, reference)
    assert run.exit_code == EXIT_OUTCOME_RECORDED
    return run.state


async def test_resumes_after_sigkill_to_the_same_end_with_no_tool_call_repeated_pvc(tmp_path: Path) -> None:
    async with ToolServer() as tools:
        urls = [tools.url("source/a"), tools.url("source/b"), tools.url("source/c")]
        async with ModelServer(research_script(urls, delay=0.25)) as model:
            spec = make_spec(model.base_url, tools={"httpFetch": {"allowedHosts": ["127.0.0.1"]}})
            run_dir = tmp_path / "run"
            run_dir.mkdir()
            config = make_config(spec, run_dir)
            env = runner_env(run_dir, config)
            kills = await run_with_kills(env, run_dir / "workspace", lambda: load_state(config), tools, seed=7, kills=3)
            resumed = await load_state(config)
            deliveries = Counter(tools.deliveries)
            reference = await uninterrupted(config, tmp_path)

    assert kills.mid_run >= 1, "a kill landed after a checkpoint of the unfinished run"
    assert final_view(resumed) == final_view(reference)
    assert resumed.counters.outcome == Outcome.SUCCEEDED.value
    assert (tmp_path / "run" / "checkpoint" / "result.txt").read_text() == reference.result
    assert (tmp_path / "run" / "workspace" / "report.md").read_text() == reference.files["report.md"]
    # The tool server executed each key once, and logged calls were never delivered again.
    assert all(count == 1 for count in tools.executions.values())
    assert len(tools.executions) == 3
    assert_no_logged_call_repeated(kills, deliveries)
    progress = read_progress(run_dir)
    assert progress.outcome is Outcome.SUCCEEDED
    assert progress.resumed_from_iteration is not None


async def test_resumes_after_sigkill_to_the_same_end_with_configmap_store(
    tmp_path: Path, testbed: KubeTestbed, namespace: str
) -> None:
    async with ToolServer() as tools:
        urls = [tools.url("source/a"), tools.url("source/b")]
        async with ModelServer(research_script(urls, delay=0.25)) as model:
            spec = make_spec(
                model.base_url, tools={"httpFetch": {"allowedHosts": ["127.0.0.1"]}}, checkpoint={"store": "ConfigMap"}
            )
            run_dir = tmp_path / "run"
            run_dir.mkdir()
            # The runner's own ServiceAccount, with the Role the operator gives it, as a runner pod has.
            run = provision_run(testbed, namespace, spec, tmp_path)
            kubeconfig = run.kubeconfig
            config = make_config(
                spec, run_dir, store="ConfigMap", namespace=namespace, uid=run.uid, progress_interval_seconds=0.5
            )
            env = runner_env(run_dir, config, {"KUBECONFIG": str(kubeconfig)})

            async def load() -> RunState:
                state, problem = await load_configmap_state(config, kubeconfig)
                assert problem is None
                return state

            kills = await run_with_kills(env, run_dir / "workspace", load, tools, seed=99, kills=3)
            resumed = await load()
            deliveries = Counter(tools.deliveries)
            reference = await uninterrupted(config, tmp_path)

    assert kills.mid_run >= 1
    assert final_view(resumed) == final_view(reference)
    assert all(count == 1 for count in tools.executions.values())
    assert_no_logged_call_repeated(kills, deliveries)
    objects = {cm["metadata"]["name"]: cm for cm in list_configmaps(testbed, namespace, "demo-")}
    progress = ProgressReport.model_validate_json(objects["demo-progress"]["data"][PROGRESS_KEY])
    assert progress.outcome is Outcome.SUCCEEDED
    assert progress.result is not None
    assert progress.result.ref == "configmap/demo-ckpt-0#result"
    assert objects["demo-ckpt-0"]["data"]["result"] == reference.result
    assert objects["demo-ckpt-0"]["metadata"]["labels"]["agentrun.dev/run"] == "demo"


async def test_sigterm_checkpoints_and_exits_resumable_without_an_outcome(tmp_path: Path) -> None:
    script = by_turn([Answer(tool_calls=[call("write_file", path="n.txt", content="x")], delay=0.2)] * 200)
    async with ModelServer(script) as model:
        spec = make_spec(model.base_url, maxIterations=200)
        config = make_config(spec, tmp_path)
        env = runner_env(tmp_path, config)
        process = await runner_working_for(env, 1.0)
        process.terminate()
        code = await process.wait(timeout=10)
        assert code == EXIT_SIGTERM, process.output
        stopped = await load_state(config)
        progress = read_progress(tmp_path)
        assert progress.outcome is None
        assert "SIGTERM" in progress.message
        assert stopped.counters.outcome is None
        assert stopped.counters.step >= 1
        assert progress.iteration == stopped.counters.step

        # The next pod resumes where this one stopped.
        requests_before = len(model.requests)
        process = await runner_working_for(env, 0.8)
        process.terminate()
        assert await process.wait(timeout=10) == EXIT_SIGTERM
    again = await load_state(config)
    assert read_progress(tmp_path).resumed_from_iteration == stopped.counters.step
    assert again.counters.step > stopped.counters.step
    assert again.messages[: len(stopped.messages)] == stopped.messages
    # The resumed pod did not replay the calls before the checkpoint.
    assert len(model.requests) - requests_before <= again.counters.step - stopped.counters.step + 1
    assert again.counters.elapsed_seconds > stopped.counters.elapsed_seconds


async def test_time_budget_counts_across_restarts(tmp_path: Path) -> None:
    script = by_turn([Answer(tool_calls=[call("list_files")], delay=0.2)] * 500)
    async with ModelServer(script) as model:
        spec = make_spec(model.base_url, maxIterations=500, maxExecutionTime="4s")
        config = make_config(spec, tmp_path)
        env = runner_env(tmp_path, config)
        process = await runner_working_for(env, 1.5)
        process.terminate()
        assert await process.wait(timeout=10) == EXIT_SIGTERM
        used = (await load_state(config)).counters.elapsed_seconds
        assert used >= 1.0
        process = await RunnerProcess(env).start()
        assert await process.wait(timeout=15) == EXIT_OUTCOME_RECORDED
    progress = read_progress(tmp_path)
    assert progress.outcome is Outcome.TIMED_OUT
    final = await load_state(config)
    # The second pod had only what the first left: the budget is not reset by a restart.
    assert 4.0 <= final.counters.elapsed_seconds < 4.0 + 1.0
    second_pod = final.counters.elapsed_seconds - used
    assert second_pod < 4.0 - 0.5
    assert progress.elapsed_seconds >= 4.0
