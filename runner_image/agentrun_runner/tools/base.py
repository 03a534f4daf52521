"""The tool interface: what a kind of tool provides, and the registry the toolbox is built from.

A kind of tool (workspace files, http_fetch, MCP servers, HTTP tools) is one module that registers
one factory with ``@register``; the factory looks at the run's config and returns a provider, or
None when the run does not use that kind. Nothing else needs to know the kind exists.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agentrun_api.contract import RunnerConfig
from agentrun_runner.settings import RunnerSettings

if TYPE_CHECKING:  # the workspace module registers a kind, so it imports this one
    from agentrun_runner.tools.workspace import Workspace

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ToolError(Exception):
    """The call failed; the message is what the model is told."""


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for, with the key that makes its effect happen once.

    ``key`` is ``{run uid}:{iteration}:{index}``: the same call re-sent after a pod loss carries the
    same key, so a tool (or the service behind it) can recognise the repeat."""

    name: str
    arguments: dict[str, Any]
    key: str


class ToolProvider(Protocol):
    """The tools of one kind that a run offers."""

    def definitions(self) -> list[dict[str, Any]]:
        """OpenAI function definitions of the tools offered ; fixed for the whole run, so a resumed run offers the same."""
        ...

    async def call(self, call: ToolCall) -> str:
        """Run one call; raise ToolError with a message for the model when it fails."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ToolContext:
    """What a factory may look at to build its provider."""

    config: RunnerConfig
    workspace: "Workspace"
    settings: RunnerSettings
    env: Mapping[str, str]  # the runner's environment: where tool credentials are


ProviderFactory = Callable[[ToolContext], ToolProvider | None]
_FACTORIES: dict[str, ProviderFactory] = {}


def register(kind: str) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register the factory of one kind of tool (a module-level decorator)."""

    def add(factory: ProviderFactory) -> ProviderFactory:
        if kind in _FACTORIES:
            raise ValueError(f"a tool kind named {kind!r} is registered twice")
        _FACTORIES[kind] = factory
        return factory

    return add


def registered_kinds() -> dict[str, ProviderFactory]:
    return dict(_FACTORIES)


def function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function-tool definition."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def string_argument(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise ToolError(f"argument {name!r} must be a string")
    return value
