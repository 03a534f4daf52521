"""Session-wide pytest setup shared by every test layer.

pytest-asyncio (1.5, on Python 3.11) asks ``asyncio.get_event_loop()`` for the "previous" loop around
each async test; with no loop set, that call creates one which nobody closes, and the unclosed loop
then fails a later test as an unraisable ResourceWarning (warnings are errors here). Setting one loop
for the session, and closing it at the end, removes that leak without hiding real ones.
"""

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_event_loop_placeholder() -> Iterator[None]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()
