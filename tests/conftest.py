"""Suite-wide test setup."""

import asyncio
import inspect
from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """Give each synchronous test an event loop of its own and close it afterwards.

    looptime's plugin asks the event loop policy for the current loop in every test, synchronous ones
    too; on Python 3.11 that creates a loop nobody closes, and its unclosed sockets surface later as
    unraisable-exception warnings in whichever test is running, which fail the suite (warnings are errors).
    """
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        return (yield)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return (yield)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
