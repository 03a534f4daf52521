"""kubectl-agentrun without a cluster: the SSE client against a real loopback server, and the formatting."""

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentrun_common.sse import DEFAULT_MAX_EVENT_BYTES, SseEvent
from agentrun_common.stream_timeouts import StreamBudget, format_chain_table, stream_chain
from agentrun_operator import kubectl_plugin
from agentrun_operator.kubectl_plugin import (
    PluginError,
    RunnerPod,
    budget_rows,
    follow_stream,
    format_event,
    format_result_summary,
    format_table,
    in_cluster_address,
    oldest_first,
    parse_result_ref,
    pod_header,
    stream_path,
    unreachable_hint,
)
from tests.harness.sse_server import SseServer

pytestmark = pytest.mark.unit


def test_format_event_puts_one_event_on_one_line() -> None:
    assert format_event(SseEvent(event="tool_call", data='{"name": "search"}', id="12")) == (
        '[12] tool_call {"name": "search"}'
    )
    assert format_event(SseEvent(event="token", data="a\nb")) == "[-] token a\n    b"


EVENTS = [("iteration", "one"), ("checkpoint", "two"), ("finished", '{"phase": "Succeeded"}')]


@pytest.fixture
def sse() -> Iterator[SseServer]:
    """Drops the first connection after two events, as a runner pod replaced mid-run would."""
    with SseServer(EVENTS, drop_first_after=2, retry_ms=10) as server:
        yield server


@pytest.fixture
def sse_server(sse: SseServer) -> str:
    return sse.url


def test_stream_reconnects_with_last_event_id_and_stops_at_finished(sse: SseServer) -> None:
    out = io.StringIO()
    waits: list[float] = []
    code = follow_stream(sse.url, "s3cret", out, sleep=waits.append)
    assert code == 0
    assert out.getvalue().splitlines() == [
        "[1] iteration one",
        "[2] checkpoint two",
        '[3] finished {"phase": "Succeeded"}',
    ]
    first, second = sse.requests
    assert first["Authorization"] == "Bearer s3cret"
    assert "Last-Event-ID" not in first
    assert second["Last-Event-ID"] == "2"
    assert waits == [0.01]  # the server's retry: field, in seconds


def test_stream_prints_what_came_before_an_endless_event_then_stops_with_an_error() -> None:
    events = [("iteration", "one"), ("token", "x" * (DEFAULT_MAX_EVENT_BYTES + 1))]
    out = io.StringIO()
    with SseServer(events) as server, pytest.raises(PluginError, match=f"more than {DEFAULT_MAX_EVENT_BYTES} bytes"):
        follow_stream(server.url, None, out, sleep=lambda _: None)
    assert out.getvalue().splitlines() == ["[1] iteration one"]


def test_stream_resumes_after_a_given_event_id(sse: SseServer) -> None:
    out = io.StringIO()
    follow_stream(sse.url, None, out, last_event_id="2", sleep=lambda _: None)
    assert out.getvalue() == '[3] finished {"phase": "Succeeded"}\n'
    assert sse.requests[0]["Last-Event-ID"] == "2"
    assert "Authorization" not in sse.requests[0]


def test_stream_refused_token_is_a_clear_error() -> None:
    with SseServer(EVENTS, status=403) as refusing, pytest.raises(PluginError, match=r"refused the token.*--token"):
        follow_stream(refusing.url, "wrong", io.StringIO(), sleep=lambda _: None)


def test_stream_gives_up_after_reconnects_without_progress() -> None:
    waits: list[float] = []
    with (
        SseServer(EVENTS, status=503) as unavailable,
        pytest.raises(PluginError, match=r"gave up after 3 reconnects without a new event \(HTTP 503\)"),
    ):
        follow_stream(unavailable.url, None, io.StringIO(), max_reconnects=3, sleep=waits.append)
    assert waits == [1.0, 2.0, 3.0]


def test_stream_at_an_address_that_never_answers_fails_at_once_saying_what_to_do() -> None:
    waits: list[float] = []
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    with pytest.raises(
        PluginError, match=r"cannot reach the stream at http://127\.0\.0\.1:9/events \(ConnectError.*--url"
    ):
        follow_stream("http://127.0.0.1:9/events", None, io.StringIO(), max_reconnects=3, sleep=waits.append)
    assert waits == []


UNFINISHED = [("iteration", "one"), ("checkpoint", "two")]  # what a runner served before it went away


def test_stream_of_an_ended_run_is_replayed_once_and_ends_without_reconnecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    waits: list[float] = []
    with SseServer(UNFINISHED, retry_ms=10) as ended:
        code = follow_stream(ended.url, None, out, sleep=waits.append, run_phase=lambda: "Succeeded")
    assert code == 0
    assert out.getvalue().splitlines() == ["[1] iteration one", "[2] checkpoint two"]
    assert len(ended.requests) == 1
    assert waits == []
    assert capsys.readouterr().err == (
        "the run ended Succeeded; its stream has nothing more after event 2 (the server closed the stream)\n"
    )


def test_stream_of_a_run_that_ends_while_followed_is_replayed_once_more_then_ends() -> None:
    out = io.StringIO()
    phases = iter(["Running", "Failed"])
    with SseServer(UNFINISHED, drop_first_after=1, retry_ms=10) as runner:
        code = follow_stream(runner.url, None, out, sleep=lambda _: None, run_phase=lambda: next(phases))
    assert code == 0
    assert out.getvalue().splitlines() == ["[1] iteration one", "[2] checkpoint two"]
    assert [request.get("Last-Event-ID") for request in runner.requests] == [None, "1"]


def test_unreachable_hint_says_how_to_reach_an_in_cluster_address() -> None:
    inside = unreachable_hint("http://q3-stream.team-a.svc:8080/events", "q3", "team-a")
    assert "kubectl port-forward -n team-a svc/q3-stream 8080:stream" in inside
    assert "--url http://127.0.0.1:8080/events" in inside
    assert "operator.streamBaseURL" in inside
    assert "kubectl agentrun result q3" in inside
    assert in_cluster_address("http://q3-stream.team-a.svc.cluster.local:8080/events")
    outside = unreachable_hint("https://agents.example.com/runs/team-a/q3/events", "q3", "team-a")
    assert outside.startswith("pass --url with an address this machine reaches")
    assert not in_cluster_address("https://agents.example.com/runs/team-a/q3/events")


def test_result_ref_forms() -> None:
    assert parse_result_ref("configmap/q3-ckpt-0#result").key == "result"
    assert parse_result_ref("configmap/q3-ckpt-0#result").name == "q3-ckpt-0"
    pvc = parse_result_ref("pvc/q3-ckpt/result/answer.md")
    assert (pvc.store, pvc.name, pvc.key) == ("pvc", "q3-ckpt", "result/answer.md")
    for bad in ("configmap/q3", "secret/x#y", "pvc/claim", ""):
        with pytest.raises(PluginError, match="neither configmap"):
            parse_result_ref(bad)


def test_result_summary_shows_phase_usage_and_where_the_result_is() -> None:
    run = {
        "status": {
            "phase": "Succeeded",
            "reason": "Succeeded",
            "usage": {"promptTokens": 100, "completionTokens": 20, "totalTokens": 120},
            "result": {"summary": "Three uses:\n1. batch", "ref": "configmap/q3-ckpt-0#result", "bytes": 2048},
        }
    }
    assert format_result_summary(run) == (
        "phase:    Succeeded\n"
        "reason:   Succeeded\n"
        "usage:    120 tokens (100 prompt, 20 completion)\n"
        "stored:   configmap/q3-ckpt-0#result (2048 bytes)\n"
        "summary:\n"
        "  Three uses:\n"
        "  1. batch\n"
    )
    assert format_result_summary({}) == "phase:    not reported yet\n"


def run_with_budget(fits: bool, *, throttle: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "q3"},
        "spec": {
            "maxIterations": 100,
            "maxExecutionTime": "30m",
            "model": {"name": "m", "requestTimeout": "2m"},
            "throttle": {"enabled": throttle, "maxSecondsToWaitInQueue": 60},
        },
        "status": {
            "budget": {
                "worstCaseSeconds": 18000 if not fits else 1200,
                "maxExecutionSeconds": 1800,
                "fits": fits,
                "activeDeadlineSeconds": 1800,
            }
        },
    }


def test_budget_warns_when_the_worst_case_exceeds_max_execution_time() -> None:
    rows = budget_rows(run_with_budget(fits=False))
    run_row = rows[0]
    assert (run_row.value_set, run_row.value_needed, run_row.verdict) == ("30m", "5h worst case", "WARN")
    deadline = rows[1]
    assert (deadline.value_set, deadline.value_needed, deadline.verdict) == ("30m", "<= 30m", "OK")
    assert [r.hop for r in rows] == [
        "run (maxExecutionTime)",
        "Job activeDeadlineSeconds",
        "model call (requestTimeout)",
    ]


def test_budget_lists_the_throttle_wait_only_when_the_throttle_is_on() -> None:
    rows = budget_rows(run_with_budget(fits=True, throttle=True))
    assert rows[0].verdict == "OK"
    assert rows[-1].hop == "throttle queue wait"
    assert rows[-1].value_set == "1m"


def test_budget_before_the_operator_computed_it_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match=r"no status\.budget yet"):
        budget_rows({"metadata": {"name": "q3"}, "spec": {}, "status": {}})


def test_table_pads_columns_like_kubectl() -> None:
    assert format_table(("HOP", "OK"), [("run", "WARN"), ("a longer hop", "OK")]) == (
        "HOP            OK\nrun            WARN\na longer hop   OK\n"
    )


def test_logs_come_oldest_pod_first_with_a_header() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    later = RunnerPod("q3-runner-b", t0.replace(minute=5), t0.replace(minute=5), "Running", restarted=False)
    first = RunnerPod("q3-runner-a", t0, t0, "Failed", restarted=True)
    assert [p.name for p in oldest_first([later, first])] == ["q3-runner-a", "q3-runner-b"]
    # Created in the same second: the start time decides, and a pod not started yet comes last.
    same_second = [
        RunnerPod("q3-runner-c", t0, None, "Pending", restarted=False),
        RunnerPod("q3-runner-z", t0, t0.replace(second=1), "Failed", restarted=False),
        RunnerPod("q3-runner-y", t0, t0.replace(second=30), "Running", restarted=False),
    ]
    assert [p.name for p in oldest_first(same_second)] == ["q3-runner-z", "q3-runner-y", "q3-runner-c"]
    assert pod_header(first) == "==> pod q3-runner-a (started 2026-01-01T12:00:00+00:00, Failed) <=="


def test_bad_kubeconfig_is_one_line_on_stderr_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert kubectl_plugin.main(["--kubeconfig", str(missing), "result", "q3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_unknown_context_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: a, context: {cluster: c, user: u}}]\n"
    )
    assert kubectl_plugin.main(["--kubeconfig", str(kubeconfig), "--context", "b", "logs", "q3"]) == 1
    assert "context 'b' is not in the kubeconfig" in capsys.readouterr().err


def test_stream_with_url_and_token_needs_no_kubeconfig(
    sse_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    args = ["--kubeconfig", str(missing), "stream", "q3", "--url", sse_server, "--token", "t"]
    assert kubectl_plugin.main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == '[3] finished {"phase": "Succeeded"}'


def full_run(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "q3"},
        "spec": {
            "instructions": "Be brief.",
            "input": "Hi",
            "model": {"name": "m"},
            "maxExecutionTime": "2h",
            "maxIterations": 10,
            **spec,
        },
    }


def test_stream_path_is_the_chain_stream_timeouts_computes_for_the_runs_budget() -> None:
    controller, hops = stream_path(full_run(), None)
    assert controller == "ingress-nginx"
    assert hops == stream_chain(
        "ingress-nginx", StreamBudget(max_execution_seconds=7200, heartbeat_interval_seconds=15)
    )
    assert format_chain_table(hops).startswith("HOP")


def test_stream_path_follows_the_runs_own_controller_unless_told_otherwise() -> None:
    run = full_run(streaming={"ingress": {"controller": "traefik", "host": "agents.example.com"}})
    assert stream_path(run, None)[0] == "traefik"
    assert stream_path(run, "contour")[0] == "contour"


def test_stream_path_defaults_to_the_controller_the_operator_checked_the_run_against() -> None:
    run = {**full_run(), "status": {"budget": {"streamController": "gke-gateway"}}}
    assert stream_path(run, None)[0] == "gke-gateway"
    assert stream_path(run, "istio")[0] == "istio"
    newer = {**full_run(), "status": {"budget": {"streamController": "some-future-proxy"}}}
    with pytest.raises(
        PluginError, match=r"'some-future-proxy'.*upgrade the plugin, or name a controller with --controller"
    ):
        stream_path(newer, None)
    assert stream_path(newer, "contour")[0] == "contour"


def test_stream_path_of_an_unreadable_spec_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match="cannot read the spec of agentrun q3"):
        stream_path({"metadata": {"name": "q3"}, "spec": {"maxIterations": 0}}, None)
