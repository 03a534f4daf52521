"""A profiler inside a benchmarked process, switched on by the benchmark alone (``--profile``).

A benchmark that profiles the operator puts this directory first on the operator's PYTHONPATH, so Python
imports this module at start, before the operator's own code, and sets:

* ``AGENTRUN_BENCH_PROFILE``: ``cpu`` (cProfile, the main thread: the operator's event loop), ``memory``
  (tracemalloc, allocations still alive, attributed to the lines that made them, and the census below) or
  ``census`` (no tracing, so at full speed: the objects alive by type, and the raw API objects by kind);
* ``AGENTRUN_BENCH_PROFILE_OUT``: where the report goes.

The report is written when the process gets SIGUSR1 (the benchmark sends it at the moment it measures):
the top entries as text in ``OUT.txt``, and for ``cpu`` the raw pstats in ``OUT`` too. Nothing of this is
in the operator or its image: without the variables, this module does nothing.
"""

import os
import signal
import sys
from pathlib import Path
from types import FrameType

MODE = os.environ.get("AGENTRUN_BENCH_PROFILE", "")
OUT = os.environ.get("AGENTRUN_BENCH_PROFILE_OUT", "")
TOP = 40
TRACEBACK_FRAMES = 6


def _start_cpu() -> None:
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()

    def report(_signal: int, _frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(OUT)
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        for order in ("tottime", "cumulative"):
            text.write(f"== by {order}\n")
            stats.sort_stats(order).print_stats(TOP)
        Path(f"{OUT}.txt").write_text(text.getvalue())
        profile.enable()

    signal.signal(signal.SIGUSR1, report)
    profile.enable()


def _census() -> list[str]:
    """Objects alive by type, and the raw API objects (dicts with a kind and metadata) by kind: who holds what."""
    import collections
    import gc

    gc.collect()
    objects = gc.get_objects()
    by_type = collections.Counter(type(obj).__qualname__ for obj in objects)
    raw_kinds = collections.Counter(
        str(obj.get("kind")) for obj in objects if type(obj) is dict and "kind" in obj and "metadata" in obj
    )
    lines = ["== objects alive (gc-tracked), by type"]
    lines += [f"{count:>9} {name}" for name, count in by_type.most_common(TOP)]
    lines.append("== raw API objects alive (dicts with kind and metadata), by kind")
    lines += [f"{count:>9} {kind}" for kind, count in raw_kinds.most_common()]
    if raw_kinds:
        kind = raw_kinds.most_common(1)[0][0]
        raws = [o for o in objects if type(o) is dict and o.get("kind") == kind and "metadata" in o]
        with_status = sum(1 for o in raws if "status" in o)
        with_fields = sum(1 for o in raws if "managedFields" in o["metadata"])
        lines.append(f"== who holds a raw {kind}: {with_status} with status, {with_fields} with managedFields")
        for sample in raws[:: max(1, len(raws) // 6)]:
            lines.append(f"  status: {'status' in sample}, managedFields: {'managedFields' in sample['metadata']}")
            for holder in gc.get_referrers(sample):
                if holder is objects or holder is raws:
                    continue
                above = [type(h).__qualname__ for h in gc.get_referrers(holder) if h is not objects][:6]
                lines.append(f"    {type(holder).__qualname__} <- {', '.join(above)}")
    return lines


def _allocator() -> list[str]:
    """pymalloc's own account (``sys._debugmallocstats``): how much of its arenas live objects use, how much is
    free but held (a burst's garbage between long-lived objects keeps whole arenas)."""
    import tempfile

    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    keys = ("# arenas allocated current", "# bytes in allocated blocks", "# bytes in available blocks", "Total")
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return [
        "== pymalloc",
        *(line for line in text.splitlines() if line.startswith(keys)),
        f"== open sockets: {sockets}",
    ]


def _start_census() -> None:
    def report(_signal: int, _frame: FrameType | None) -> None:
        Path(f"{OUT}.txt").write_text("\n".join([*_allocator(), *_census()]) + "\n")

    signal.signal(signal.SIGUSR1, report)


def _start_memory() -> None:
    import gc
    import tracemalloc

    tracemalloc.start(TRACEBACK_FRAMES)

    def report(_signal: int, _frame: FrameType | None) -> None:
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        total = sum(stat.size for stat in snapshot.statistics("filename"))
        lines = [f"live traced memory: {total / 1024 / 1024:.1f} MiB", "== by line"]
        lines += [str(stat) for stat in snapshot.statistics("lineno")[:TOP]]
        lines.append("== by file")
        lines += [str(stat) for stat in snapshot.statistics("filename")[:TOP]]
        lines.append("== by traceback (largest)")
        for stat in snapshot.statistics("traceback")[:15]:
            lines.append(f"{stat.size / 1024:.0f} KiB in {stat.count} blocks")
            lines += [f"    {line}" for line in stat.traceback.format()]
        lines += _census()
        Path(f"{OUT}.txt").write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, report)


if MODE and OUT:
    {"cpu": _start_cpu, "memory": _start_memory, "census": _start_census}[MODE]()
    sys.stderr.write(f"bench profiling: {MODE} profile of pid {os.getpid()} on SIGUSR1 to {OUT}.txt\n")
