"""The runner's exit code tells the Job what to do: only a config or setting the user must fix exits
with EXIT_INVALID_CONFIG (the Job's pod failure policy fails the run as InvalidSpec at once); an error
met while running exits as a crash, which the Job retries with a pod that resumes from the checkpoint.

The runner runs as the container's entrypoint, ``python -m agentrun_runner``, in a subprocess.
"""

from pathlib import Path

import pytest

from agentrun_api.contract import EXIT_INVALID_CONFIG
from agentrun_runner.__main__ import EXIT_CRASH
from tests.harness.model_server import Answer, ModelServer, by_turn, call
from tests.harness.runner import RunnerProcess, make_config, make_spec, read_progress, runner_env

pytestmark = pytest.mark.integration


async def test_an_error_at_run_time_exits_as_a_crash_not_as_an_invalid_config(tmp_path: Path) -> None:
    # A lone UTF-16 surrogate is valid in JSON but cannot be encoded as UTF-8: the runner meets a
    # ValueError while running, which says nothing about the user's spec.
    script = by_turn([Answer(content="half a pair: \ud800", tool_calls=[call("list_files")]), Answer("done")])
    async with ModelServer(script) as model:
        config = make_config(make_spec(model.base_url), tmp_path)
        process = await RunnerProcess(runner_env(tmp_path, config)).start()
        code = await process.wait()

    assert code == EXIT_CRASH != EXIT_INVALID_CONFIG, process.output
    assert "runner crashed; the next pod resumes from the last checkpoint" in process.output
    assert "Traceback" in process.output, "a crash is logged with where it happened"
    assert read_progress(tmp_path).outcome is None, "a crash records no outcome: the next pod goes on"


async def test_a_setting_that_does_not_parse_exits_as_an_invalid_config(tmp_path: Path) -> None:
    async with ModelServer(by_turn([Answer("done")])) as model:
        config = make_config(make_spec(model.base_url), tmp_path)
        env = runner_env(tmp_path, config, {"AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE": "many"})
        process = await RunnerProcess(env).start()
        code = await process.wait()

    assert code == EXIT_INVALID_CONFIG
    assert "AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE='many' is not a whole number" in process.output
    assert "Traceback" not in process.output
    assert model.requests == []
