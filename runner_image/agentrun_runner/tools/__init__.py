"""Tools a model may call. Each kind is one module that registers itself (``base.register``);
importing this package loads them all, in the order their tools are offered."""

from agentrun_runner.tools import http_fetch, http_tool, mcp, workspace
from agentrun_runner.tools.base import IDEMPOTENCY_HEADER, ToolCall, ToolContext, ToolError, register
from agentrun_runner.tools.http_fetch import HTTP_FETCH_TOOL, HttpFetch, host_allowed
from agentrun_runner.tools.toolbox import Toolbox
from agentrun_runner.tools.workspace import WORKSPACE_TOOLS, Workspace

__all__ = [
    "HTTP_FETCH_TOOL",
    "IDEMPOTENCY_HEADER",
    "WORKSPACE_TOOLS",
    "HttpFetch",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "Toolbox",
    "Workspace",
    "host_allowed",
    "http_fetch",
    "http_tool",
    "mcp",
    "register",
    "workspace",
]
