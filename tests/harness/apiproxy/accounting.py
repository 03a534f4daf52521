"""Request accounting: every request the API proxy relayed or failed, with counters by verb and kind."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """One API request as the apiserver's audit log would describe it (see `requestinfo` for how it is parsed)."""

    method: str
    path: str
    # Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection; "" for non-resource URLs.
    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    kind: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    code: int = 0
    user_agent: str = ""
    # Wall-clock time of arrival (time.time()), to count the requests within one run's life.
    at: float = field(default_factory=time.time)


class RequestLog:
    """All requests in arrival order; `count()` and `by_kind()` answer "how many API calls, of what"."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.records)

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    def where(self, predicate: Callable[[RequestRecord], bool]) -> RequestLog:
        """The requests matching `predicate`, as a log of their own (e.g. the operator's: by user agent)."""
        selected = RequestLog()
        selected.records = [r for r in self.records if predicate(r)]
        return selected

    def between(self, start: float, end: float | None = None) -> RequestLog:
        """The requests that arrived in [start, end] (wall-clock seconds), as a log of their own."""
        return self.where(lambda r: r.at >= start and (end is None or r.at <= end))

    def count(
        self,
        *,
        verb: str | None = None,
        kind: str | None = None,
        resource: str | None = None,
        subresource: str | None = None,
    ) -> int:
        return sum(
            1
            for r in self.records
            if (verb is None or r.verb == verb)
            and (kind is None or r.kind == kind)
            and (resource is None or r.resource == resource)
            and (subresource is None or r.subresource == subresource)
        )

    def by_verb(self) -> Counter[str]:
        return Counter(r.verb for r in self.records if r.verb)

    def by_kind(self) -> Counter[str]:
        return Counter(r.kind for r in self.records if r.kind)

    def by_kind_and_verb(self) -> Counter[tuple[str, str]]:
        return Counter((r.kind, r.verb) for r in self.records if r.kind)

    def summary(self) -> str:
        """A table of API requests by kind and verb, for a run's closing note."""
        lines = [f"{'KIND':<28} {'VERB':<18} COUNT"]
        for (kind, verb), count in sorted(self.by_kind_and_verb().items()):
            lines.append(f"{kind:<28} {verb:<18} {count}")
        lines.append(f"{'total':<28} {'':<18} {len(self.records)}")
        return "\n".join(lines)
