"""Every operator log line about a run names the run, in both formats, and carries no secret."""

import json
import logging

import pytest

from agentrun_operator.logs import JsonFormatter, TextFormatter, drop_routine_handler_lines

pytestmark = pytest.mark.unit


def record_about_run(message: str) -> logging.LogRecord:
    record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)
    record.k8s_ref = {"apiVersion": "agentrun.dev/v1alpha1", "kind": "AgentRun", "namespace": "team-a", "name": "q3"}
    return record


def test_text_lines_about_a_run_name_it():
    line = TextFormatter().format(record_about_run("Handler 'admit_run' succeeded."))
    assert line.endswith("INFO kopf.objects: [team-a/q3] Handler 'admit_run' succeeded.")


def test_text_lines_about_nothing_in_particular_carry_no_brackets():
    record = logging.LogRecord("agentrun", logging.INFO, __file__, 1, "operator started", None, None)
    assert TextFormatter().format(record).endswith("INFO agentrun: operator started")


def test_json_lines_about_a_run_carry_its_reference():
    document = json.loads(JsonFormatter().format(record_about_run("Job created")))
    assert document["object"] == "team-a/q3"
    assert document["kind"] == "AgentRun"
    assert document["message"] == "Job created"


def test_routine_watch_handler_lines_are_dropped_and_everything_else_kept():
    assert not drop_routine_handler_lines(record_about_run("Handler 'run_changed' succeeded."))
    assert not drop_routine_handler_lines(record_about_run("Handler 'child_changed' succeeded."))
    assert drop_routine_handler_lines(record_about_run("Handler 'declare_pool' succeeded."))
    failed = record_about_run("Handler 'run_changed' failed with an exception. Will ignore.")
    failed.levelno = logging.ERROR
    assert drop_routine_handler_lines(failed)
