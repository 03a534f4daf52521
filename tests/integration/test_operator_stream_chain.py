"""The real operator checks each run's stream chain behind the cluster's controller when it admits the run:
a hop that cuts the stream before the run ends gives condition StreamChainFits=False and one Warning Event
holding the chain table; a run that fits gets StreamChainFits=True and no Event."""

import dataclasses

import pytest

from agentrun_api import conditions as c
from agentrun_operator.kubectl_plugin import stream_path
from tests.harness.inprocess_operator import FAST, Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration

# Google's load balancers cap the whole-response timer (BackendConfig timeoutSec) at a day.
BEHIND_GKE_INGRESS = dataclasses.replace(FAST, stream_controller="gke-ingress")


def chain_warnings(cluster: Cluster, run: str) -> list[dict[str, object]]:
    return [
        e for e in cluster.events(run) if e.get("type") == "Warning" and e.get("reason") == c.REASON_STREAM_HOP_CUTS
    ]


async def test_a_run_longer_than_a_capped_hop_gets_a_warning_with_the_chain_table_and_one_that_fits_none(
    cluster: Cluster,
) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster, BEHIND_GKE_INGRESS):
        cluster.create(run_manifest("long", maxExecutionTime="30h"))
        cluster.create(run_manifest("short", maxExecutionTime="2h"))

        cut = await eventually(lambda: cluster.condition(c.STREAM_CHAIN_FITS, "long"), message="condition on long")
        fits = await eventually(lambda: cluster.condition(c.STREAM_CHAIN_FITS, "short"), message="condition on short")
        await eventually(lambda: chain_warnings(cluster, "long"), message="the Warning Event")
        await eventually(lambda: cluster.condition(c.ACCEPTED, "short"), message="short accepted")

        assert (cut["status"], cut["reason"]) == ("False", c.REASON_STREAM_HOP_CUTS)
        assert "gke-ingress" in cut["message"]
        assert "BackendConfig spec.timeoutSec" in cut["message"]
        assert (fits["status"], fits["reason"]) == ("True", c.REASON_STREAM_CHAIN_FITS)

        (warning,) = chain_warnings(cluster, "long")
        message = str(warning["message"])
        table = message.splitlines()[1:]
        assert table[0].split() == ["HOP", "TIMER", "SET", "NEEDED", "STATUS"]
        capped = next(row for row in table if row.startswith("Google external Application LB"))
        assert "86400" in capped
        assert capped.endswith("WARN")
        assert len(message.encode()) <= 1024
        assert chain_warnings(cluster, "short") == []
        # `kubectl agentrun budget` prints the chain the operator checked, with no --controller.
        assert cluster.status("long")["budget"]["streamController"] == "gke-ingress"
        assert stream_path(cluster.run("long"), None)[0] == "gke-ingress"

    # A restarted operator admits both runs again (resume): no second Event, the conditions stay.
    async with running_operator(cluster, BEHIND_GKE_INGRESS):
        await eventually(lambda: cluster.condition(c.ACCEPTED, "long"), message="long accepted")
        assert len(chain_warnings(cluster, "long")) == 1
        assert chain_warnings(cluster, "short") == []
        cut_again = cluster.condition(c.STREAM_CHAIN_FITS, "long")
        assert cut_again is not None
        assert cut_again["status"] == "False"


async def test_a_runs_own_exposure_is_checked_behind_the_controller_it_names(cluster: Cluster) -> None:
    cluster.add_api_key_secret()
    async with running_operator(cluster):  # the cluster's controller: ingress-nginx, which has no whole-response cap
        cluster.create(
            run_manifest(
                "own",
                maxExecutionTime="30h",
                streaming={"ingress": {"controller": "gke-gateway", "host": "agents.example.com"}},
            )
        )
        cluster.create(run_manifest("shared", maxExecutionTime="30h"))

        own = await eventually(lambda: cluster.condition(c.STREAM_CHAIN_FITS, "own"), message="condition on own")
        shared = await eventually(lambda: cluster.condition(c.STREAM_CHAIN_FITS, "shared"), message="on shared")
        await eventually(lambda: chain_warnings(cluster, "own"), message="the Warning Event")

        assert own["status"] == "False"
        assert "gke-gateway" in own["message"]
        assert shared["status"] == "True"
        assert chain_warnings(cluster, "shared") == []
        assert [cluster.status(run)["budget"]["streamController"] for run in ("own", "shared")] == [
            "gke-gateway",
            "ingress-nginx",
        ]
