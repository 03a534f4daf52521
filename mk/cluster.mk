# The real-cluster dev loop on kind (https://kind.sigs.k8s.io/docs/user/quick-start/). It needs docker (or
# another engine kind supports), kind, helm and kubectl on PATH; none of them runs in this repository's CI.
#   make kind-up images kind-load deploy e2e-cluster kind-down      (images: mk/images.mk, built with docker here)

KIND ?= kind
HELM ?= helm
KUBECTL ?= kubectl
DOCKER ?= docker
KIND_CLUSTER ?= agentrun
# Images are loaded into the kind nodes, never pushed: the dev tag and pullPolicy Never keep it that way.
IMAGE_TAG ?= dev
OPERATOR_REPOSITORY ?= agentrun-operator
RUNNER_REPOSITORY ?= agentrun-runner
GATEWAY_REPOSITORY ?= agentrun-stream-gateway
OPERATOR_IMAGE := $(OPERATOR_REPOSITORY):$(IMAGE_TAG)
RUNNER_IMAGE := $(RUNNER_REPOSITORY):$(IMAGE_TAG)
GATEWAY_IMAGE := $(GATEWAY_REPOSITORY):$(IMAGE_TAG)
RELEASE_NAMESPACE ?= agentrun-system

.PHONY: kind-up
kind-up: ## Create the kind cluster kind-$(KIND_CLUSTER)
	$(KIND) create cluster --name $(KIND_CLUSTER) --wait 120s

.PHONY: kind-load
kind-load: ## Load the images into the kind cluster's nodes
	$(KIND) load docker-image $(OPERATOR_IMAGE) $(RUNNER_IMAGE) $(GATEWAY_IMAGE) --name $(KIND_CLUSTER)

.PHONY: deploy
deploy: ## Install the chart into the kind cluster with the local images
	$(HELM) upgrade --install agentrun-operator ./helm/agentrun-operator \
		--kube-context kind-$(KIND_CLUSTER) -n $(RELEASE_NAMESPACE) --create-namespace --wait \
		--set image.repository=$(OPERATOR_REPOSITORY) --set image.tag=$(IMAGE_TAG) \
		--set image.pullPolicy=Never \
		--set runnerImage.repository=$(RUNNER_REPOSITORY) --set runnerImage.tag=$(IMAGE_TAG) \
		--set operator.logFormat=text

.PHONY: e2e-cluster
e2e-cluster: install ## Run the cluster tests against kind-$(KIND_CLUSTER)
	AGENTRUN_E2E_CLUSTER=1 AGENTRUN_E2E_CONTEXT=kind-$(KIND_CLUSTER) $(BIN)/pytest -m cluster tests/cluster

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
