# The one source of commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Install Debian packages (the names follow it in the recipe line): as root directly, otherwise through sudo.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

# The variables that target descriptions name (kind-$(KIND_CLUSTER)): `make help` prints their values, passed to
# awk through its environment, instead of the unexpanded references.
HELP_TARGETS := '^[a-zA-Z0-9_-]+:.*?\#\# '
HELP_VARIABLES = $(sort $(shell grep -hE $(HELP_TARGETS) $(MAKEFILE_LIST) | sed 's/^[^\#]*\#\# //' \
	| grep -oE '\$$\([A-Za-z0-9_]+\)' | tr -d '$$()'))

.PHONY: help
help: ## List the targets
	@grep -hE $(HELP_TARGETS) $(MAKEFILE_LIST) | $(foreach name,$(HELP_VARIABLES),$(name)='$($(name))') \
		awk 'BEGIN{FS=":.*?## "}{ \
			text = $$2; \
			while (match(text, /\$$\([A-Za-z0-9_]+\)/)) \
				text = substr(text, 1, RSTART - 1) ENVIRON[substr(text, RSTART + 2, RLENGTH - 3)] substr(text, RSTART + RLENGTH); \
			printf "  \033[36m%-14s\033[0m %s\n", $$1, text }'

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install
install: $(BIN)/activate ## Create .venv and install the project with its dev tools

CRD_VALIDATORS := tests/crd_schemas/node_modules/.package-lock.json
$(CRD_VALIDATORS): tests/crd_schemas/package.json tests/crd_schemas/package-lock.json
	npm ci --prefix tests/crd_schemas --no-audit --no-fund --loglevel=error
	touch $@

.PHONY: crd-validators
crd-validators: $(CRD_VALIDATORS) ## Install the published third-party CRD schemas the tests validate against (npm)

.PHONY: browser
browser: ## Install headless Chromium (Debian's chromium) for the watch page's tests, when /usr/bin/chromium is missing
	@[ -x /usr/bin/chromium ] || { $(APT_INSTALL) chromium; }

MCP_SERVERS := tests/mcp_servers/node_modules/.package-lock.json
$(MCP_SERVERS): tests/mcp_servers/package.json tests/mcp_servers/package-lock.json
	npm ci --prefix tests/mcp_servers --no-audit --no-fund --loglevel=error
	touch $@

.PHONY: mcp-servers
mcp-servers: $(MCP_SERVERS) ## Install the third-party MCP servers the tool tests run (npm)

.PHONY: fmt
fmt: install ## Format the code
	$(BIN)/ruff format api common operator runner_image gateway tests bench images release
	$(BIN)/ruff check --fix api common operator runner_image gateway tests bench images release

.PHONY: lint
lint: install actionlint ## Lint with ruff, and the workflows with actionlint
	$(BIN)/ruff check api common operator runner_image gateway tests bench images release

.PHONY: typecheck
typecheck: install ## Type-check with mypy (strict)
	$(BIN)/mypy

.PHONY: crds
crds: install ## Regenerate crds/ from the pydantic models
	PYTHONPATH=api:common $(PY) -m agentrun_api.crd > crds/agentruns.agentrun.dev.yaml
	PYTHONPATH=api:common $(PY) -m agentrun_api.crd --all crds

.PHONY: chart-sync
chart-sync: install ## Copy crds/, the RBAC rules and the stream routes into the Helm chart (tests fail when they differ)
	rm -f helm/agentrun-operator/files/crds/*.yaml
	cp crds/*.yaml helm/agentrun-operator/files/crds/
	PYTHONPATH=api:common:operator $(PY) -m agentrun_operator.permissions > helm/agentrun-operator/files/rbac-rules.yaml
	PYTHONPATH=api:common:operator $(PY) -m agentrun_operator.chart_routes > helm/agentrun-operator/files/stream-routes.yaml
	PYTHONPATH=api:common $(PY) -m agentrun_api.approval > helm/agentrun-operator/files/approval-policy.yaml

# The real control plane the integration and e2e tests run on, built from Kubernetes' Go modules.
KUBE_MINOR ?= $(shell cat tests/kube/default-minor)
export KUBE_MINOR

.PHONY: kube-binaries
kube-binaries: ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler (KUBE_MINOR=1.xx; cold ~12 min, then seconds)
	bash tests/kube/build.sh

.PHONY: node-tools
node-tools: ## Install the Debian packages the node agent needs when missing (iproute2's ip; util-linux's unshare, nsenter)
	@command -v ip >/dev/null && command -v unshare >/dev/null && command -v nsenter >/dev/null \
		|| { $(APT_INSTALL) --no-install-recommends iproute2 util-linux; }

.PHONY: control-plane
control-plane: install kube-binaries node-tools ## Run the real control plane with a node agent until Ctrl-C (prints the kubeconfig)
	$(PY) -m tests.harness.testbed --state-dir .control-plane

.PHONY: test
test: install crd-validators mcp-servers kube-binaries node-tools browser krew ## Run the whole test suite (unit, integration, e2e on the real control plane)
	$(BIN)/pytest

BENCH_PATH := PYTHONPATH=api:common:operator:runner_image:gateway:.
BENCH_QUICK ?=

.PHONY: bench
bench: install kube-binaries ## Every benchmark, figures and ratios (docs/performance.md), each on a control plane of its own where it needs one; BENCH_QUICK=--quick for a smoke run
	@echo "== reconcile latency, throughput and operator memory against the same creates, on a real control plane (bench/reconcile_scale.py)"
	$(BENCH_PATH) $(PY) bench/reconcile_scale.py $(BENCH_QUICK)
	@echo "== the operator's API requests over one 50-iteration run, counted by the API proxy in front of a real kube-apiserver (bench/operator_api_requests.py)"
	$(BENCH_PATH) $(PY) bench/operator_api_requests.py $(BENCH_QUICK)
	@echo "== runner overhead and checkpoint bytes per iteration (bench/runner_overhead.py)"
	$(BENCH_PATH) $(PY) bench/runner_overhead.py $(BENCH_QUICK)
	@echo "== resume time from a 500-iteration checkpoint (bench/resume_time.py)"
	$(BENCH_PATH) $(PY) bench/resume_time.py $(BENCH_QUICK)
	@echo "== stream fan-out: 100 SSE readers on one run, relay lag and the agent's iteration rate without and with them (bench/gateway_fanout.py)"
	$(BENCH_PATH) $(PY) bench/gateway_fanout.py $(BENCH_QUICK)
	@echo "== the stream bound to the checkpoint log: token latency and checkpoint writes per run, before/after (bench/stream_log.py)"
	$(BENCH_PATH) $(PY) bench/stream_log.py $(BENCH_QUICK)
	@echo "== throttle pool: rate, concurrency, fairness (bench/throttle_pool.py)"
	$(BENCH_PATH) $(PY) bench/throttle_pool.py $(BENCH_QUICK)
	@echo "== runs API: 202 latency p50/p99 under 50 concurrent submitters, duplicates under client retries (bench/runs_api.py)"
	$(BENCH_PATH) $(PY) bench/runs_api.py $(BENCH_QUICK)

.PHONY: bench-runner
bench-runner: install kube-binaries ## Runner loop overhead and checkpoint write sizes over a 500-iteration run
	$(PY) bench/runner_overhead.py --iterations 500

.PHONY: check
check: lint typecheck test ## Lint, type-check and test: what CI runs

.PHONY: bench-gateway
bench-gateway: install kube-binaries ## Measure the stream gateway's relay lag and memory with 100 readers on one run
	$(PY) bench/gateway_fanout.py --readers 100

.PHONY: bench-runs-api
bench-runs-api: install kube-binaries ## The runs API's 202 latency (p50/p99) under 50 concurrent submitters and the duplicate count under client retries
	$(BENCH_PATH) $(PY) bench/runs_api.py --submitters 50

.PHONY: demo
demo: install kube-binaries ## See it work: examples/minimal.yaml from Pending to Succeeded, its runner killed and resumed (< 1 min, root)
	$(PY) -m tests.harness.demo

.PHONY: soak
soak: install ## Random runner SIGKILLs over 10x the CI trials (AGENTRUN_SOAK=10; seed from AGENTRUN_CHAOS_SEED)
	AGENTRUN_SOAK=$${AGENTRUN_SOAK:-10} $(BIN)/pytest -p no:cacheprovider -s tests/e2e/test_chaos.py -k random

.PHONY: local-cluster
local-cluster: install kube-binaries ## Run the whole path here (real control plane, node agent, operator, scripted model) until Ctrl-C
	$(PY) -m tests.harness.local_cluster --state-dir .local-cluster

include mk/cluster.mk
include mk/images.mk
