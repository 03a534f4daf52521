"""The workspace tools: read, write and list files in the run's own directory, which survives restarts."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentrun_runner.tools.base import (
    ToolCall,
    ToolContext,
    ToolError,
    function,
    object_schema,
    register,
    string_argument,
)

_PATH = {"type": "string", "description": "Path relative to the workspace, for example notes/plan.md."}
WORKSPACE_TOOLS = [
    function("read_file", "Read a text file from the run's workspace.", object_schema({"path": _PATH}, ["path"])),
    function(
        "write_file",
        "Write (replace) a text file in the run's workspace; it survives restarts.",
        object_schema(
            {"path": _PATH, "content": {"type": "string", "description": "The whole new content."}},
            ["path", "content"],
        ),
    ),
    function("list_files", "List the files in the run's workspace with their sizes.", object_schema({}, [])),
]


class Workspace:
    """Files under one directory; every path is checked to stay inside it."""

    def __init__(self, root: Path, on_write: Callable[[str, str], None], max_read_bytes: int) -> None:
        self.root = root
        self._on_write = on_write
        self._max_read_bytes = max_read_bytes

    def resolve(self, relative: str) -> Path:
        if not relative or relative.startswith("/") or "\x00" in relative:
            raise ToolError(f"path {relative!r} must be relative to the workspace")
        root = self.root.resolve()
        target = (root / relative).resolve()  # resolves symlinks and "..", so both are caught below
        if target == root or not target.is_relative_to(root):
            raise ToolError(f"path {relative!r} leaves the workspace")
        return target

    def restore(self, files: dict[str, str]) -> None:
        """Write back files from a checkpoint (a replaced pod starts with an empty workspace)."""
        for relative, text in files.items():
            target = self.resolve(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    def read_file(self, path: str) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise ToolError(f"no file {path!r} in the workspace")
        data = target.read_bytes()
        if len(data) > self._max_read_bytes:
            raise ToolError(f"{path!r} has {len(data)} bytes; read_file returns at most {self._max_read_bytes}")
        return data.decode("utf-8", errors="replace")

    def write_file(self, path: str, content: str) -> str:
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        relative = target.relative_to(self.root.resolve()).as_posix()
        self._on_write(relative, content)
        return f"wrote {len(content.encode('utf-8'))} bytes to {relative}"

    def list_files(self) -> str:
        root = self.root.resolve()
        if not root.exists():
            return "[]"
        listing = [
            {"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
        return json.dumps(listing)


class WorkspaceTools:
    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def definitions(self) -> list[dict[str, Any]]:
        return WORKSPACE_TOOLS

    async def call(self, call: ToolCall) -> str:
        args = call.arguments
        if call.name == "read_file":
            return self._workspace.read_file(string_argument(args, "path"))
        if call.name == "write_file":
            return self._workspace.write_file(string_argument(args, "path"), string_argument(args, "content"))
        return self._workspace.list_files()

    async def close(self) -> None:
        return None


@register("workspace")
def workspace_tools(context: ToolContext) -> WorkspaceTools | None:
    return WorkspaceTools(context.workspace) if context.config.spec.tools.workspace else None
