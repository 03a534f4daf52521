"""The built-in tools a model may call: workspace files and an allow-listed HTTP GET.

Each is safe by default: files stay inside the run's workspace directory, and http_fetch reaches
only the hosts the spec lists, with a size cap, no redirects followed and a timeout. A tool that
fails raises ToolError; the loop hands its message to the model as the call's result.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agentrun_api.spec import HttpFetchSpec, ToolsSpec
from agentrun_runner.approvals import ApprovalGate
from agentrun_runner.settings import RunnerSettings

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ToolError(Exception):
    """The call failed; the message is what the model is told."""


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_PATH = {"type": "string", "description": "Path relative to the workspace, for example notes/plan.md."}
WORKSPACE_TOOLS = [
    _function("read_file", "Read a text file from the run's workspace.", {"path": _PATH}, ["path"]),
    _function(
        "write_file",
        "Write (replace) a text file in the run's workspace; it survives restarts.",
        {"path": _PATH, "content": {"type": "string", "description": "The whole new content."}},
        ["path", "content"],
    ),
    _function("list_files", "List the files in the run's workspace with their sizes.", {}, []),
]
HTTP_FETCH_TOOL = _function(
    "http_fetch",
    "HTTP GET a URL on an allowed host; returns status, content type and the (size-capped) body.",
    {"url": {"type": "string", "description": "An http or https URL."}},
    ["url"],
)


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


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed_hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


async def read_at_most(content: aiohttp.StreamReader, size: int) -> bytes:
    """``size`` bytes of the body, fewer only at its end. ``StreamReader.read(n)`` returns what is
    buffered (often one network read), not ``n`` bytes: once would cut a long body short."""
    pieces: list[bytes] = []
    left = size
    while left > 0:
        piece = await content.read(left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


class HttpFetch:
    def __init__(self, spec: HttpFetchSpec) -> None:
        self._spec = spec
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, idempotency_key: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolError(f"{url!r} is not an http or https URL")
        if not host_allowed(parts.hostname, self._spec.allowed_hosts):
            raise ToolError(f"host {parts.hostname!r} is not in tools.httpFetch.allowedHosts")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        limit = self._spec.max_response_bytes
        try:
            async with self._session.get(
                url, headers={IDEMPOTENCY_HEADER: idempotency_key}, allow_redirects=False
            ) as response:
                body = await read_at_most(response.content, limit + 1)
                result = {
                    "status": response.status,
                    "contentType": response.headers.get("Content-Type", ""),
                    "body": body[:limit].decode("utf-8", errors="replace"),
                    "truncated": len(body) > limit,
                }
                if "Location" in response.headers:
                    result["location"] = response.headers["Location"]  # not followed: it may leave the allow-list
        except aiohttp.ClientError as error:
            raise ToolError(f"GET {url} failed: {error}") from None
        return json.dumps(result)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Toolbox:
    """The tools this run offers, by name."""

    def __init__(
        self, spec: ToolsSpec, workspace: Workspace, settings: RunnerSettings, gate: ApprovalGate | None = None
    ) -> None:
        self._gate = gate or ApprovalGate(None)
        self._workspace = workspace if spec.workspace else None
        self._http = HttpFetch(spec.http_fetch) if spec.http_fetch is not None else None
        self._max_output = settings.max_tool_output_chars

    def definitions(self) -> list[dict[str, Any]]:
        offered: list[dict[str, Any]] = []
        if self._workspace is not None:
            offered.extend(WORKSPACE_TOOLS)
        if self._http is not None:
            offered.append(HTTP_FETCH_TOOL)
        return offered

    async def call(self, name: str, arguments: str, idempotency_key: str) -> str:
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            raise ToolError(f"arguments of {name} are not valid JSON") from None
        if not isinstance(args, dict):
            raise ToolError(f"arguments of {name} must be a JSON object")
        self._gate.check(name, arguments, idempotency_key)  # raises when the call waits for, or was refused, approval
        output = await self._dispatch(name, args, idempotency_key)
        if len(output) > self._max_output:
            output = output[: self._max_output] + f"\n[cut: output had {len(output)} characters]"
        return output

    async def _dispatch(self, name: str, args: dict[str, Any], idempotency_key: str) -> str:
        workspace = self._workspace
        if workspace is not None and name == "read_file":
            return workspace.read_file(_string(args, "path"))
        if workspace is not None and name == "write_file":
            return workspace.write_file(_string(args, "path"), _string(args, "content"))
        if workspace is not None and name == "list_files":
            return workspace.list_files()
        if self._http is not None and name == "http_fetch":
            return await self._http.fetch(_string(args, "url"), idempotency_key)
        raise ToolError(f"there is no tool named {name!r}")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _string(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise ToolError(f"argument {name!r} must be a string")
    return value
