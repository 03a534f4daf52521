"""The Argo CD health check for AgentRun, run as Argo CD runs it: a Lua chunk with the live object in `obj`."""

from datetime import UTC, datetime
from typing import Any

import lupa
import pytest

from agentrun_api import constants
from agentrun_api.status import AgentRunStatus, Phase
from tests.harness.chart import CHART_DIR, REPO_ROOT

pytestmark = pytest.mark.unit

SCRIPT = (CHART_DIR / "files" / "argocd-health.lua").read_text()
ARGOCD_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
EXPECTED = {
    Phase.PENDING: "Progressing",
    Phase.RUNNING: "Progressing",
    Phase.SUSPENDED: "Suspended",
    Phase.WAITING_FOR_APPROVAL: "Suspended",
    Phase.SUCCEEDED: "Healthy",
    Phase.FAILED: "Degraded",
    Phase.TIMED_OUT: "Degraded",
    Phase.CANCELLED: "Degraded",
}


def agent_run(status: AgentRunStatus | None, *, generation: int = 1) -> dict[str, Any]:
    run: dict[str, Any] = {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "metadata": {"name": "q3", "namespace": "agents", "generation": generation},
        "spec": {"instructions": "Be brief.", "input": "Hi", "maxIterations": 3, "maxExecutionTime": "5m"},
    }
    if status is not None:
        run["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return run


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the script the way Argo CD's Lua VM does: `obj` global, no os/io, the chunk returns a table."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=False)
    lua_globals = lua.globals()
    for unsafe in ("os", "io", "require", "dofile", "loadfile", "load", "package", "debug"):
        lua_globals[unsafe] = None
    lua_globals.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    assert lupa.lua_type(result) == "table"
    return {"status": result["status"], "message": result["message"]}


def test_every_phase_has_a_health() -> None:
    assert set(EXPECTED) == set(Phase)
    assert set(EXPECTED.values()) <= ARGOCD_HEALTH


@pytest.mark.parametrize("phase", list(Phase))
def test_phase_maps_to_argocd_health_with_the_status_message(phase: Phase) -> None:
    status = AgentRunStatus(phase=phase, message=f"the run is {phase.value.lower()}", observed_generation=1)
    health = argocd_health(agent_run(status))
    assert health == {"status": EXPECTED[phase], "message": f"the run is {phase.value.lower()}"}


def test_run_without_status_is_progressing() -> None:
    assert argocd_health(agent_run(None))["status"] == "Progressing"


def test_status_without_phase_is_progressing() -> None:
    assert argocd_health(agent_run(AgentRunStatus()))["status"] == "Progressing"


def test_message_falls_back_to_phase_and_reason() -> None:
    status = AgentRunStatus(phase=Phase.TIMED_OUT, reason="MaxExecutionTimeExceeded", observed_generation=1)
    assert argocd_health(agent_run(status)) == {"status": "Degraded", "message": "TimedOut: MaxExecutionTimeExceeded"}


def test_unobserved_suspend_is_progressing_until_the_operator_acts() -> None:
    """spec.suspend changed (generation 2) but status still reflects generation 1."""
    status = AgentRunStatus(phase=Phase.RUNNING, message="iteration 4", observed_generation=1)
    health = argocd_health(agent_run(status, generation=2))
    assert health["status"] == "Progressing"
    assert "not yet acted" in health["message"]


def test_ended_run_keeps_its_health_whatever_the_generation() -> None:
    status = AgentRunStatus(
        phase=Phase.SUCCEEDED,
        message="done",
        observed_generation=1,
        completion_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert argocd_health(agent_run(status, generation=3))["status"] == "Healthy"


def test_docs_ship_the_same_script_as_the_chart() -> None:
    """docs/install.md embeds the script for argocd-cm; it must be this file, not a drifting copy."""
    docs = (REPO_ROOT / "docs" / "install.md").read_text()
    indented = "\n".join(("    " + line) if line else "" for line in SCRIPT.rstrip("\n").splitlines())
    assert indented in docs
