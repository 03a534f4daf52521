"""Pure checks: workspace path containment, the host allow-list, Retry-After parsing, what a message
may quote of a URL or an answer, settings."""

import email.utils
import time
from pathlib import Path

import pytest

from agentrun_runner.model import ANSWER_PREVIEW_CHARS, answer_preview, retry_after_seconds, shown_url
from agentrun_runner.settings import RunnerSettings
from agentrun_runner.tools import ToolError, Workspace, host_allowed

pytestmark = pytest.mark.unit


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root, lambda path, text: None, max_read_bytes=100)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "", ".", "a\x00b"])
def test_paths_outside_the_workspace_are_refused(workspace: Workspace, path: str) -> None:
    with pytest.raises(ToolError, match="workspace"):
        workspace.resolve(path)


def test_a_symlink_out_of_the_workspace_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    (workspace.root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ToolError, match="leaves the workspace"):
        workspace.read_file("link")


def test_writes_are_reported_for_the_checkpoint_and_reads_are_capped(tmp_path: Path) -> None:
    written: list[tuple[str, str]] = []
    root = tmp_path / "ws"
    workspace = Workspace(root, lambda path, text: written.append((path, text)), max_read_bytes=5)
    workspace.write_file("notes/a.md", "hello")
    assert written == [("notes/a.md", "hello")]
    assert workspace.read_file("notes/a.md") == "hello"
    workspace.write_file("big.txt", "123456")
    with pytest.raises(ToolError, match="at most 5"):
        workspace.read_file("big.txt")
    assert workspace.list_files() == '[{"path": "big.txt", "bytes": 6}, {"path": "notes/a.md", "bytes": 5}]'


def test_restore_writes_checkpointed_files_back(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "fresh", lambda path, text: None, max_read_bytes=100)
    workspace.restore({"report.md": "# R", "d/n.txt": "n"})
    assert (tmp_path / "fresh" / "d" / "n.txt").read_text() == "n"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("example.com", True),
        ("EXAMPLE.com", True),
        ("api.docs.example.org", True),
        ("example.org", False),
        ("evil-example.com", False),
        ("example.com.evil.net", False),
        ("docs.example.org", True),
    ],
)
def test_host_allow_list(host: str, allowed: bool) -> None:
    assert host_allowed(host, ["example.com", "*.example.org"]) is allowed


def test_retry_after_in_all_its_forms() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    date = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < (retry_after_seconds({"retry-after": date}) or 0) <= 120


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("https://user:s3cret@llm.example.com:8443/v1?api-key=s3cret", "https://llm.example.com:8443/v1"),
        ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ],
)
def test_a_url_in_a_message_shows_neither_credentials_nor_query(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_an_answer_is_quoted_as_one_short_printable_line() -> None:
    page = "<html>\r\n\t<title>Sign in</title>\x1b[0m\x00" + "x" * 1000
    preview = answer_preview(page.encode())
    assert preview.startswith("<html> <title>Sign in</title> [0m x")
    assert preview.isprintable()
    assert len(preview) == ANSWER_PREVIEW_CHARS + len("...")
    assert answer_preview("Zürich \u2013 東京".encode()) == "Zürich \u2013 東京"
    assert answer_preview(b"\xff\xfe") == "\ufffd\ufffd"


def test_settings_come_from_env_with_their_types() -> None:
    settings = RunnerSettings.from_env(
        {"AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "2.5", "AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE": "8", "OTHER": "x"}
    )
    assert settings.sse_linger_seconds == 2.5
    assert settings.sse_client_queue_size == 8
    assert settings.event_flush_seconds == RunnerSettings().event_flush_seconds
    with pytest.raises(ValueError, match="AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE='many' is not a whole number"):
        RunnerSettings.from_env({"AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE": "many"})


def test_runner_seconds_may_be_durations_and_sizes_must_be_positive() -> None:
    assert RunnerSettings.from_env({"AGENTRUN_RUNNER_SSE_LINGER_SECONDS": "1m"}).sse_linger_seconds == 60.0
    with pytest.raises(ValueError, match="AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE='0' is out of range"):
        RunnerSettings.from_env({"AGENTRUN_RUNNER_SSE_CLIENT_QUEUE_SIZE": "0"})
