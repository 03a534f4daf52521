"""The MCPServer resource: one MCP server (streamable HTTP) declared once per namespace, used by runs.

A server is infrastructure shared by many runs, so its URL, credentials and timeout are declared
once, reviewed and versioned like any manifest, instead of copied into every run. Runs reference
it in ``spec.tools.mcp`` with the tool names they may use. The operator connects to the server
(the official ``mcp`` SDK), lists its tools and records them in ``status.tools``: what a run may
name, with the schema the model is shown.

The CRD's schema is generated from these models (``agentrun_api.crd``), as for AgentRun.
"""

from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import Field

from agentrun_api import constants
from agentrun_api.spec import TAKES_DURATION, DurationBounds, HeaderFromSecret, SpecModel
from agentrun_api.status import StatusModel

KIND: Final = "MCPServer"
PLURAL: Final = "mcpservers"
SINGULAR: Final = "mcpserver"
SHORT_NAMES: Final = ("mcp",)
CRD_NAME: Final = f"{PLURAL}.{constants.GROUP}"
# The _meta entry and the HTTP header that carry a call's idempotency key to the server.
IDEMPOTENCY_META_KEY: Final = "dev.agentrun/idempotency-key"
# What an OpenAI-compatible API accepts as a function name; a tool named otherwise cannot be offered.
MODEL_TOOL_NAME_PATTERN: Final = r"^[a-zA-Z0-9_-]{1,64}$"


class MCPServerSpec(SpecModel):
    """Where the server is and how to reach it."""

    url: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="The server's streamable HTTP endpoint, for example http://tools.internal:8080/mcp. Its host "
        "must be allowed by the operator's policy (AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS).",
    )
    headers: list[HeaderFromSecret] = Field(
        default_factory=list,
        max_length=16,
        description="HTTP headers sent on every request to the server, each value from a Secret in this namespace "
        "(for example Authorization). The values reach only the pods of runs that use this server.",
    )
    timeout: Annotated[str, DurationBounds("1s", "1h")] = Field(
        default="30s", description=f"Timeout of one request to the server (connect, list, call). {TAKES_DURATION}"
    )


class DiscoveredTool(StatusModel):
    """One tool the server lists."""

    name: str = Field(max_length=128, description="The tool's name, as runs name it in spec.tools.mcp[].tools.")
    description: str = Field(default="", max_length=4096, description="What the server says the tool does.")
    input_schema: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON Schema of the tool's arguments, as the model is shown it.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class MCPServerStatus(StatusModel):
    """What the operator found the last time it listed the server's tools."""

    ready: bool = Field(default=False, description="Whether the last listing succeeded.")
    tools: list[DiscoveredTool] = Field(default_factory=list, description="The tools the server lists.")
    listed_at: datetime | None = Field(default=None, description="When the tools were last listed.")
    message: str = Field(default="", max_length=1024, description="Why the last listing failed, or what it found.")
    observed_generation: int = Field(default=0, ge=0, description="The spec generation the listing was made for.")


def model_tool_name(server: str, tool: str) -> str:
    """The name the model calls an MCP server's tool by: unique across the run's servers and built-ins."""
    return f"{server}__{tool}"
