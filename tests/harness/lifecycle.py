"""The context-manager form the harness's long-lived parts share: ``with part:`` starts it and stops it."""

from types import TracebackType
from typing import Self


class StartStop:
    """``start()`` on entry, ``stop()`` on exit, and ``stop()`` too when the start fails midway, so a part that
    started some of its processes leaves none behind. ``stop()`` must accept a partial start."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
