"""Session-wide test hygiene.

looptime's pytest plugin asks the event loop policy for "the" loop even around synchronous
tests; on Python 3.11 that call creates a loop nobody closes, and with warnings as errors the
session then fails at exit with "unclosed event loop". Giving each synchronous test its own loop,
closed right after, keeps the plugin's lookup harmless.
"""

import asyncio
from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    if pyfuncitem.get_closest_marker("asyncio") is not None:  # pytest-asyncio's tests (auto mode marks them)
        return (yield)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return (yield)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
