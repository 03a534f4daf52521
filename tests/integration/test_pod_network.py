"""Services route on the test ground as on a cluster: pods get pod-network IPs, the real EndpointSlice controller
lists the Ready ones, the kube-proxy stand-in answers on each ClusterIP, the cluster DNS names Services, and the
node agent runs probes as kubelet runs them."""

import ipaddress
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.nodeagent.kube import JsonObject
from tests.harness.podnet.resolver import ClusterResolver
from tests.harness.testbed import KubeTestbed
from tests.integration.node_env import IMAGE, NodeEnv, node_env

# A web server on its pod's IP (every pod here shares the machine's network namespace, so it binds its own IP, as
# the project's processes do): GET answers with the pod's name; /ready turns 503 after POST /unready; POST /sick
# leaves the mark the exec liveness probe looks for, and a fresh start clears it.
WEB_SERVER = textwrap.dedent(
    """
    import http.server, os, pathlib
    name, sick = os.environ["POD_NAME"], pathlib.Path("/data/sick")
    sick.unlink(missing_ok=True)
    state = {"ready": True}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, code, body=b""):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(200 if self.path != "/ready" or state["ready"] else 503, name.encode())

        def do_POST(self):
            if self.path == "/unready":
                state["ready"] = False
            if self.path == "/sick":
                sick.touch()
            self._answer(204)

        def log_message(self, *args):
            pass

    print("serving", flush=True)
    http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
    """
)
FAST_PROBE = {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1}


def web_pod(name: str, app: str, **container: Any) -> JsonObject:
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    main = {
        "name": "web",
        "image": IMAGE,
        "command": ["python", "-c", WEB_SERVER],
        "env": env,
        "ports": [{"name": "http", "containerPort": 8080}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, **FAST_PROBE},
        **container,
    }
    spec = {"containers": [main], "volumes": [{"name": "data", "emptyDir": {}}], "terminationGracePeriodSeconds": 1}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}}, "spec": spec}


def service(name: str, app: str, **spec: Any) -> JsonObject:
    ports = [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service", "spec": {"selector": {"app": app}, "ports": ports, **spec}}


@pytest.fixture
async def env(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> AsyncIterator[NodeEnv]:
    async with node_env(testbed, namespace, tmp_path) as node:
        yield node


@pytest.fixture
async def http(testbed: KubeTestbed) -> AsyncIterator[aiohttp.ClientSession]:
    """The test process's client: Service names resolve through the cluster DNS, as in a pod."""
    connector = aiohttp.TCPConnector(resolver=ClusterResolver(testbed.network_plan.dns_ip), force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def ready_pod(env: NodeEnv, name: str, app: str, **container: Any) -> JsonObject:
    await env.kube.create(env.path("v1", "pods"), web_pod(name, app, **container))

    async def ready() -> JsonObject | None:
        pod = await env.kube.get(env.path("v1", "pods", name))
        conditions = ((pod or {}).get("status") or {}).get("conditions") or []
        return pod if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    return await env.eventually(ready, f"pod {name} Ready", timeout=30)


async def endpoints(env: NodeEnv, service_name: str) -> dict[str, bool]:
    """Address -> ready, over the Service's EndpointSlices as the real controller wrote them."""
    path = (
        env.path("discovery.k8s.io/v1", "endpointslices") + f"?labelSelector=kubernetes.io/service-name={service_name}"
    )
    found: dict[str, bool] = {}
    for endpoint_slice in await env.kube.list(path):
        for endpoint in endpoint_slice.get("endpoints") or []:
            for address in endpoint["addresses"]:
                found[address] = bool(endpoint["conditions"].get("ready"))
    return found


async def get_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200, (url, response.status)
        return await response.text()


async def test_the_endpoint_slice_controller_lists_ready_pods_by_their_pod_network_ip(
    env: NodeEnv, testbed: KubeTestbed
) -> None:
    await env.create("v1", "services", "web", service("web", "web"))
    pods = [await ready_pod(env, f"web-{index}", "web") for index in range(2)]
    pod_ips = {pod["status"]["podIP"] for pod in pods}
    pod_range = ipaddress.IPv4Network(testbed.network_plan.pod_cidr)
    assert all(ipaddress.IPv4Address(ip) in pod_range for ip in pod_ips), pod_ips
    assert all(pod["status"]["podIPs"] == [{"ip": pod["status"]["podIP"]}] for pod in pods)

    async def both_listed() -> dict[str, bool] | None:
        found = await endpoints(env, "web")
        return found if found == dict.fromkeys(pod_ips, True) else None

    await env.eventually(both_listed, "both pods ready in the Service's EndpointSlice", timeout=20)
    path = env.path("discovery.k8s.io/v1", "endpointslices") + "?labelSelector=kubernetes.io/service-name=web"
    (endpoint_slice,) = await env.kube.list(path)
    # The named targetPort resolved to the pods' containerPort by the controller.
    assert endpoint_slice["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]
    node = await env.kube.get("/api/v1/nodes/" + testbed.node.node_name)
    assert node is not None
    assert node["spec"]["podCIDR"] == testbed.network_plan.pod_cidr


async def test_a_pod_and_the_test_process_reach_a_service_by_its_dns_names(
    env: NodeEnv, testbed: KubeTestbed, http: aiohttp.ClientSession
) -> None:
    await env.create("v1", "services", "web", service("web", "web"))
    await ready_pod(env, "web-0", "web")
    (cluster_ip,) = testbed.resolve(f"web.{env.namespace}.svc")
    created = await env.kube.get(env.path("v1", "services", "web"))
    assert created is not None
    assert created["spec"]["clusterIP"] == cluster_ip
    assert testbed.resolve(f"web.{env.namespace}.svc.cluster.local") == [cluster_ip]
    assert testbed.resolve(f"absent.{env.namespace}.svc") == []

    async def routed() -> str | None:
        try:
            return await get_text(http, f"http://web.{env.namespace}.svc/")
        except aiohttp.ClientError:
            return None

    assert await env.eventually(routed, "the Service routing from the test process", timeout=20) == "web-0"

    # From a pod: the short name and <svc>.<ns> through the pod's search path, the full names as they are, and a
    # name outside the cluster still through the machine's resolver (the DNS forwards it).
    client = """
        import socket, urllib.request
        for host in ("web", "web.NS", "web.NS.svc", "web.NS.svc.cluster.local"):
            print(host, urllib.request.urlopen(f"http://{host}/", timeout=5).read().decode(), flush=True)
        print("localhost", socket.gethostbyname("localhost"), flush=True)
    """.replace("NS", env.namespace)
    await env.job("client", client)
    await env.job_condition("client", "Complete", timeout=30)
    (client_pod,) = await env.pods("client")
    log = env.node.read_log(env.namespace, client_pod["metadata"]["name"])
    for host in ("web", f"web.{env.namespace}", f"web.{env.namespace}.svc", f"web.{env.namespace}.svc.cluster.local"):
        assert f"{host} web-0" in log, log
    assert "localhost 127.0.0.1" in log, log


async def test_a_pod_that_is_not_ready_gets_no_traffic_and_a_service_without_ready_pods_refuses(
    env: NodeEnv, testbed: KubeTestbed, http: aiohttp.ClientSession
) -> None:
    await env.create("v1", "services", "web", service("web", "web"))
    healthy, failing = [await ready_pod(env, name, "web") for name in ("healthy", "failing")]
    url = f"http://web.{env.namespace}.svc/"
    async with http.post(f"http://{failing['status']['podIP']}:8080/unready") as answer:
        assert answer.status == 204

    async def failing_unready() -> dict[str, bool] | None:
        found = await endpoints(env, "web")
        wanted = {healthy["status"]["podIP"]: True, failing["status"]["podIP"]: False}
        return found if found == wanted else None

    await env.eventually(failing_unready, "the failing pod listed not ready", timeout=20)
    pod = await env.kube.get(env.path("v1", "pods", "failing"))
    assert pod is not None
    assert pod["status"]["containerStatuses"][0]["ready"] is False

    async def proxy_agrees() -> bool:  # the proxy's own watch sees the same slice change
        assert testbed.network.directory is not None
        return testbed.network.directory.ready_endpoints(env.namespace, "web", "web") == [
            (healthy["status"]["podIP"], 8080)
        ]

    await env.eventually(proxy_agrees, "the service proxy routing to the healthy pod only", timeout=10)
    answers = {await get_text(http, url) for _ in range(20)}
    assert answers == {"healthy"}

    async with http.post(f"http://{healthy['status']['podIP']}:8080/unready") as answer:
        assert answer.status == 204

    async def refused() -> bool:
        try:
            await get_text(http, url)
        except aiohttp.ClientConnectorError:
            return True
        return False

    await env.eventually(refused, "a Service without ready endpoints refusing connections", timeout=20)


async def test_a_deleted_service_stops_routing_and_resolving(
    env: NodeEnv, testbed: KubeTestbed, http: aiohttp.ClientSession
) -> None:
    await env.create("v1", "services", "web", service("web", "web"))
    await ready_pod(env, "web-0", "web")
    url = f"http://web.{env.namespace}.svc/"

    async def routed() -> str | None:
        try:
            return await get_text(http, url)
        except aiohttp.ClientError:
            return None

    await env.eventually(routed, "the Service routing", timeout=20)
    (cluster_ip,) = testbed.resolve(f"web.{env.namespace}.svc")
    await env.kube.delete(env.path("v1", "services", "web"))

    async def gone() -> bool:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as plain:
                await get_text(plain, f"http://{cluster_ip}/")
        except aiohttp.ClientConnectorError:
            return not testbed.resolve(f"web.{env.namespace}.svc")
        return False

    await env.eventually(gone, "the deleted Service's ClusterIP unreachable and its name gone", timeout=20)


async def test_a_headless_service_name_resolves_to_its_ready_pods(env: NodeEnv, testbed: KubeTestbed) -> None:
    await env.create("v1", "services", "web", service("web", "web", clusterIP="None"))
    pods = [await ready_pod(env, f"web-{index}", "web") for index in range(2)]

    async def both() -> list[str] | None:
        addresses = testbed.resolve(f"web.{env.namespace}.svc")
        return addresses if addresses == sorted(pod["status"]["podIP"] for pod in pods) else None

    await env.eventually(both, "the headless name resolving to both pods", timeout=20)


async def test_a_failing_exec_liveness_probe_restarts_the_container_in_place(
    env: NodeEnv, http: aiohttp.ClientSession
) -> None:
    liveness = {"exec": {"command": ["sh", "-c", "test ! -e /data/sick"]}, **FAST_PROBE}
    startup = {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 30}
    pod = await ready_pod(env, "web-0", "web", livenessProbe=liveness, startupProbe=startup)
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0
    assert status["started"] is True
    async with http.post(f"http://{pod['status']['podIP']}:8080/sick") as answer:
        assert answer.status == 204

    async def restarted_and_ready() -> JsonObject | None:
        found = await env.kube.get(env.path("v1", "pods", "web-0"))
        container = ((found or {}).get("status") or {}).get("containerStatuses") or [{}]
        return found if container[0].get("restartCount") == 1 and container[0].get("ready") else None

    again = await env.eventually(restarted_and_ready, "the container restarted by its liveness probe", timeout=30)
    assert again["status"]["phase"] == "Running"
    assert again["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] in (137, 143)
    assert await get_text(http, f"http://{again['status']['podIP']}:8080/") == "web-0"


async def test_a_startup_probe_that_never_passes_restarts_the_container_which_never_becomes_ready(
    env: NodeEnv,
) -> None:
    startup = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}
    await env.kube.create(env.path("v1", "pods"), web_pod("stuck", "stuck", startupProbe=startup))

    async def restarted() -> JsonObject | None:
        found = await env.kube.get(env.path("v1", "pods", "stuck"))
        statuses = ((found or {}).get("status") or {}).get("containerStatuses") or [{}]
        return found if statuses[0].get("restartCount", 0) >= 1 else None

    pod = await env.eventually(restarted, "the container restarted by its startup probe", timeout=30)
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is False
    assert status["started"] is False
    assert status["lastState"]["terminated"]["exitCode"] in (137, 143)
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"
