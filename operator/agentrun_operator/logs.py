"""Log formatting: text for people, one JSON object per line for log pipelines.

kopf's per-object loggers attach the object's reference to each record (``k8s_ref``); both formats
carry it, so every line about a run names the run's namespace/name.
"""

import json
import logging
from typing import Any, Literal


def _run_of(record: logging.LogRecord) -> str:
    ref: dict[str, Any] | None = getattr(record, "k8s_ref", None)
    if not ref or not ref.get("name"):
        return ""
    namespace = ref.get("namespace")
    return f"{namespace}/{ref['name']}" if namespace else str(ref["name"])


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(run_prefix)s%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's own name
        run = _run_of(record)
        record.run_prefix = f"[{run}] " if run else ""
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run = _run_of(record)
        if run:
            document["object"] = run
            document["kind"] = (getattr(record, "k8s_ref", None) or {}).get("kind", "")
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


# The watch-event handlers run on every event of every run's AgentRun, Job, pods and progress report:
# kopf's "succeeded" line for each is thousands of lines a minute that say nothing (failures still log).
WATCH_HANDLERS = ("run_changed", "child_changed", "forget_deleted_pool")
_ROUTINE = frozenset(f"Handler {name!r} succeeded." for name in WATCH_HANDLERS)


def drop_routine_handler_lines(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.INFO and record.msg in _ROUTINE)


def configure_logging(log_format: Literal["text", "json"]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("kopf.objects").addFilter(drop_routine_handler_lines)
