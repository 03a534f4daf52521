"""Fixtures for integration tests against the emulated apiserver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.harness.apiserver import EmulatedApiServer

AGENTRUNS = "/apis/agentrun.dev/v1alpha1/namespaces/default/agentruns"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}


def agentrun(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid AgentRun manifest."""
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": {
            "instructions": "You are terse.",
            "input": "Say hi.",
            "model": {"name": "gpt-4.1-mini"},
            "maxExecutionTime": "10m",
            "maxIterations": 5,
            **spec,
        },
    }


@pytest.fixture
async def http(apiserver: EmulatedApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client on the emulated apiserver's URL."""
    async with aiohttp.ClientSession(base_url=apiserver.url + "/") as session:
        yield session
