"""The run's toolbox: the providers of every registered kind the run uses, and the one dispatch
function every tool call passes through (argument parsing, routing, the size bound)."""

import json
from typing import Any

from agentrun_runner.approvals import ApprovalGate
from agentrun_runner.tools.base import ToolCall, ToolContext, ToolError, ToolProvider, registered_kinds


class Toolbox:
    """The tools this run offers, by name."""

    def __init__(self, context: ToolContext, gate: ApprovalGate | None = None) -> None:
        self._gate = gate or ApprovalGate(None)
        self._providers: list[ToolProvider] = []
        for factory in registered_kinds().values():
            provider = factory(context)
            if provider is not None:
                self._providers.append(provider)
        self._by_name: dict[str, ToolProvider] = {}
        self._definitions: list[dict[str, Any]] = []
        self._max_output = context.settings.max_tool_output_chars
        for provider in self._providers:
            for definition in provider.definitions():
                name = definition["function"]["name"]
                if name in self._by_name:
                    raise ValueError(f"two tools are named {name!r}; rename one in the run's spec")
                self._by_name[name] = provider
                self._definitions.append(definition)

    def definitions(self) -> list[dict[str, Any]]:
        return self._definitions

    async def dispatch(self, name: str, arguments: str, idempotency_key: str) -> str:
        """Run one call the model asked for. Every call passes here, the approval gate's check among its steps."""
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            raise ToolError(f"arguments of {name} are not valid JSON") from None
        if not isinstance(args, dict):
            raise ToolError(f"arguments of {name} must be a JSON object")
        provider = self._by_name.get(name)
        if provider is None:
            raise ToolError(f"there is no tool named {name!r}")
        self._gate.check(name, arguments, idempotency_key)  # raises when the call waits for, or was refused, approval
        output = await provider.call(ToolCall(name=name, arguments=args, key=idempotency_key))
        return bound_output(output, self._max_output)

    async def close(self) -> None:
        for provider in self._providers:
            await provider.close()


def bound_output(output: str, limit: int) -> str:
    """At most ``limit`` characters of a result, cut with a note that tells the model so."""
    if len(output) <= limit:
        return output
    return output[:limit] + f"\n[cut: the result had {len(output)} characters; only the first {limit} are shown]"
