"""The tool interface: a kind of tool is one registered factory; every call passes through one
dispatch that parses the arguments, routes by name and bounds the result."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrun_runner.settings import RunnerSettings
from agentrun_runner.tools import Toolbox, ToolCall, ToolContext, ToolError, Workspace, base
from agentrun_runner.tools.toolbox import bound_output
from tests.harness.runner import make_config, make_spec

pytestmark = pytest.mark.unit


class Echo:
    """A kind of tool defined only in this test: it says what it was called with."""

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    def definitions(self) -> list[dict[str, Any]]:
        return [base.function("echo", "Say it back.", base.object_schema({"text": {"type": "string"}}, ["text"]))]

    async def call(self, call: ToolCall) -> str:
        self.calls.append(call)
        return base.string_argument(call.arguments, "text") * 3

    async def close(self) -> None:
        return None


@pytest.fixture
def echo_kind() -> Iterator[Echo]:
    echo = Echo()
    base.register("echo-for-test")(lambda context: echo)
    yield echo
    del base._FACTORIES["echo-for-test"]


def toolbox(tmp_path: Path, **settings: Any) -> Toolbox:
    config = make_config(make_spec("http://127.0.0.1:1/v1"), tmp_path)
    workspace = Workspace(tmp_path / "ws", lambda path, text: None, max_read_bytes=100)
    context = ToolContext(config=config, workspace=workspace, settings=RunnerSettings(**settings), env={})
    return Toolbox(context)


async def test_a_registered_kind_is_offered_and_called_through_dispatch(echo_kind: Echo, tmp_path: Path) -> None:
    tools = toolbox(tmp_path)
    names = [d["function"]["name"] for d in tools.definitions()]
    assert names == ["read_file", "write_file", "list_files", "echo"]  # built-ins first, in registration order
    assert await tools.dispatch("echo", '{"text": "ab"}', "uid:1:0") == "ababab"
    assert echo_kind.calls == [ToolCall(name="echo", arguments={"text": "ab"}, key="uid:1:0")]
    assert await tools.dispatch("write_file", '{"path": "a.md", "content": "x"}', "uid:1:1") == "wrote 1 bytes to a.md"


async def test_dispatch_refuses_bad_arguments_and_unknown_names(echo_kind: Echo, tmp_path: Path) -> None:
    tools = toolbox(tmp_path)
    with pytest.raises(ToolError, match="not valid JSON"):
        await tools.dispatch("echo", "{", "k")
    with pytest.raises(ToolError, match="must be a JSON object"):
        await tools.dispatch("echo", "[1]", "k")
    with pytest.raises(ToolError, match="no tool named 'nope'"):
        await tools.dispatch("nope", "{}", "k")
    assert echo_kind.calls == []


async def test_a_result_over_the_bound_is_cut_with_a_note(echo_kind: Echo, tmp_path: Path) -> None:
    tools = toolbox(tmp_path, max_tool_output_chars=10)
    output = await tools.dispatch("echo", '{"text": "0123456789"}', "k")
    assert output == "0123456789\n[cut: the result had 30 characters; only the first 10 are shown]"
    assert bound_output("short", 10) == "short"


def test_a_kind_registered_twice_is_refused(echo_kind: Echo) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        base.register("echo-for-test")(lambda context: None)
