"""The chain of timers between a client and the runner, hop by hop, and the table that shows it."""

import enum
from dataclasses import dataclass


class TimerKind(enum.StrEnum):
    IDLE = "idle"  # reset by any byte: heartbeats keep it alive
    WHOLE_RESPONSE = "whole-response"  # not reset by heartbeats: must cover the run, or be survived by resuming
    KEEP_ALIVE = "keep-alive"  # idle time between requests on a reused connection
    CLUSTER_SETTING = "cluster-setting"  # cluster-wide, cannot be set per route: check it by hand


class HopStatus(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"  # the timer cuts the stream before the run ends; clients survive by resuming
    CHECK = "CHECK"  # a cluster-wide setting this tool can neither set nor read


@dataclass(frozen=True)
class Hop:
    hop: str
    """Where the timer sits, for example "ingress-nginx (Ingress)"."""
    kind: TimerKind
    setting: str
    """The key that holds the timer."""
    value_set: str
    """What the rendered objects set, or the platform's default when nothing can be set."""
    value_needed: str
    """What the run's budget needs."""
    status: HopStatus
    note: str = ""
    seconds_set: float | None = None
    """The value set, in seconds, where it is a number (None: disabled, unknown or not a duration)."""


_COLUMNS = ("HOP", "TIMER", "SETTING", "SET", "NEEDED", "STATUS", "NOTE")
_COMPACT_COLUMNS = ("HOP", "TIMER", "SET", "NEEDED", "STATUS")


def _row(hop: Hop, compact: bool) -> tuple[str, ...]:
    if compact:
        return (hop.hop, hop.kind.value, hop.value_set, hop.value_needed, hop.status.value)
    return (hop.hop, hop.kind.value, hop.setting, hop.value_set, hop.value_needed, hop.status.value, hop.note)


def format_chain_table(hops: list[Hop], *, compact: bool = False) -> str:
    """A plain-text table, one hop a row (what `kubectl agentrun budget` prints). ``compact`` leaves out
    the SETTING and NOTE columns, for places with little room such as an Event's message."""
    columns = _COMPACT_COLUMNS if compact else _COLUMNS
    rows = [columns] + [_row(h, compact) for h in hops]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"
