"""Image pull secrets of runner pods: the operator's default ones (the chart's runnerImage.pullSecrets) and a run's
own spec.runner.imagePullSecrets reach the Job's pod template on the real control plane; a name that is no Secret
name is refused at admission."""

import dataclasses

import pytest

from tests.harness.inprocess_operator import FAST, Cluster, eventually, run_manifest, running_operator

pytestmark = pytest.mark.integration


async def test_the_jobs_pods_pull_with_the_operators_default_secrets_then_the_runs_own(cluster: Cluster) -> None:
    settings = dataclasses.replace(FAST, runner_image_pull_secrets=("platform-registry",))
    async with running_operator(cluster, settings):
        cluster.add_api_key_secret()
        pull_secrets = [{"name": "team-registry"}, {"name": "platform-registry"}]
        cluster.create(run_manifest(runner={"image": FAST.runner_image, "imagePullSecrets": pull_secrets}))
        job = await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
    pod = job["spec"]["template"]["spec"]
    # Each Secret once, the platform's first: the kubelet tries them in order.
    assert pod["imagePullSecrets"] == [{"name": "platform-registry"}, {"name": "team-registry"}]


async def test_a_run_without_pull_secrets_gets_a_pod_without_any(cluster: Cluster) -> None:
    async with running_operator(cluster):
        cluster.add_api_key_secret()
        cluster.create(run_manifest())
        job = await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
    assert "imagePullSecrets" not in job["spec"]["template"]["spec"]


def test_a_pull_secret_that_is_no_secret_name_is_refused_at_admission(cluster: Cluster) -> None:
    with pytest.raises(AssertionError, match=r"422.*imagePullSecrets\[0\]\.name"):
        cluster.create(run_manifest(runner={"imagePullSecrets": [{"name": "Team_Registry"}]}))
