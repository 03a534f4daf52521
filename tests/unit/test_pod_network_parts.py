"""The pure parts of the test ground's pod network: the address plan, the DNS wire format and answers, and which
endpoints a Service's port leads to."""

import ipaddress
import random
from typing import Any

from tests.harness.podnet.addresses import NetworkPlan, plan_network
from tests.harness.podnet.directory import ServiceDirectory
from tests.harness.podnet.dns import (
    RCODE_NXDOMAIN,
    TYPE_A,
    ClusterDnsServer,
    build_answer,
    build_query,
    parse_addresses,
    parse_question,
)
from tests.harness.podnet.network import cluster_name
from tests.harness.podnet.resolver import resolv_conf

TYPE_AAAA = 28


def test_a_plan_splits_a_free_random_slash_16_of_10_slash_8_into_services_and_pods() -> None:
    taken = [ipaddress.IPv4Network(f"10.{octet}.0.0/16") for octet in range(0, 256) if octet != 77]
    plan = plan_network(random.Random(1), avoid=taken)
    assert plan == NetworkPlan(service_cidr="10.77.0.0/17", pod_cidr="10.77.128.0/17")
    assert plan.dns_ip == "10.77.0.10"
    assert plan.kubernetes_service_ip == "10.77.0.1"
    plans = {plan_network(random.Random(seed), avoid=[]).service_cidr for seed in range(20)}
    assert len(plans) > 1, "random, so that sessions side by side do not meet"


def test_a_plan_avoids_an_address_the_machine_uses() -> None:
    name_server = ipaddress.IPv4Network("10.200.255.53/32")
    for seed in range(50):
        plan = plan_network(random.Random(seed), avoid=[name_server])
        session = ipaddress.IPv4Network(plan.service_cidr).supernet()
        assert not session.overlaps(name_server)
        assert session.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))


def test_a_query_and_its_answer_survive_the_wire() -> None:
    query = build_query("web.shop.svc.cluster.local", 4242)
    query_id, flags, question = parse_question(query)
    assert (query_id, question.name, question.qtype) == (4242, "web.shop.svc.cluster.local", TYPE_A)
    answer = build_answer(query, query_id, flags, question, 0, ["10.1.2.3", "10.1.2.4"])
    assert parse_addresses(answer) == (0, ["10.1.2.3", "10.1.2.4"])
    assert parse_question(answer)[0] == 4242


def lookup(namespace: str, service: str) -> list[str] | None:
    return {("shop", "web"): ["10.1.0.7"]}.get((namespace, service))


def test_the_cluster_dns_answers_services_refuses_other_cluster_names_and_leaves_the_rest() -> None:
    dns = ClusterDnsServer("10.1.0.10", "cluster.local", lookup)
    assert dns.answer_locally("web.shop.svc.cluster.local", TYPE_A) == (0, ["10.1.0.7"])
    # The name exists, but has no IPv6 address: NOERROR without records, so a resolver keeps the A answer.
    assert dns.answer_locally("web.shop.svc.cluster.local", TYPE_AAAA) == (0, [])
    # What a pod's search path tries first for "web.shop.svc", and a Service that does not exist.
    assert dns.answer_locally("web.shop.svc.shop.svc.cluster.local", TYPE_A) == (RCODE_NXDOMAIN, [])
    assert dns.answer_locally("db.shop.svc.cluster.local", TYPE_A) == (RCODE_NXDOMAIN, [])
    assert dns.answer_locally("pypi.org", TYPE_A) is None


def test_service_names_take_the_form_a_pods_search_path_gives_them() -> None:
    assert cluster_name("web.shop.svc") == "web.shop.svc.cluster.local"
    assert cluster_name("Web.Shop.svc.cluster.local.") == "web.shop.svc.cluster.local"
    assert cluster_name("example.com") is None
    assert cluster_name("web") is None
    assert resolv_conf("10.1.0.10", "shop") == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.1.0.10\noptions ndots:5\n"
    )


def endpoint_slice(service: str, port_name: str, port: int, endpoints: list[tuple[str, bool]]) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{service}-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}} for address, ready in endpoints],
    }


def test_a_service_port_leads_to_the_ready_endpoints_at_the_port_the_slice_resolved() -> None:
    directory = ServiceDirectory(None, lambda: None)  # type: ignore[arg-type]  # no watch: objects set below
    service = {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.1.0.7", "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
    }
    headless = {"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": []}}
    directory.services.objects = {("shop", "web"): service, ("shop", "db"): headless}
    directory.slices.objects = {
        ("shop", "web-abc"): endpoint_slice("web", "http", 8080, [("10.1.128.5", True), ("10.1.128.6", False)]),
        ("shop", "db-abc"): endpoint_slice("db", "", 5432, [("10.1.128.9", True)]),
    }
    assert [(port.cluster_ip, port.port, port.name) for port in directory.service_ports()] == [("10.1.0.7", 80, "http")]
    assert directory.ready_endpoints("shop", "web", "http") == [("10.1.128.5", 8080)]
    assert directory.ready_endpoints("shop", "web", "metrics") == []
    assert directory.addresses_of("shop", "web") == ["10.1.0.7"]
    assert directory.addresses_of("shop", "db") == ["10.1.128.9"]
    assert directory.addresses_of("shop", "absent") == []
