# Images, the release's tools and the kubectl plugin's files (docs/images.md).
#   make images                                   the three images, with buildah or docker
#   make images push REGISTRY=ghcr.io/you/agentrun-operator IMAGE_TAG=0.1.0
# Without a docker daemon the images are built with buildah (no daemon) on a base made from Debian packages
# (images/base.sh); IMAGE_BUILDER=buildah|docker and IMAGE_BASE=debian|official choose otherwise.
REGISTRY ?=
IMAGE_BUILDER ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo buildah)
IMAGE_ENV = IMAGE_BUILDER=$(IMAGE_BUILDER) REGISTRY=$(REGISTRY) IMAGE_TAG=$(IMAGE_TAG) $(if $(IMAGE_BASE),IMAGE_BASE=$(IMAGE_BASE))
# Debian packages that build and run images without a daemon: buildah, debootstrap (the base), runc.
IMAGE_TOOLS := buildah debootstrap runc

.PHONY: image-tools
image-tools: ## Install buildah, debootstrap and runc with apt when one is missing (builds with docker need none)
	@if [ "$(IMAGE_BUILDER)" = buildah ]; then \
		missing=$$(for tool in $(IMAGE_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
		[ -z "$$missing" ] || { $(APT_INSTALL) $$missing; }; \
	fi

.PHONY: images
images: image-tools ## Build the operator, runner and gateway images with $(IMAGE_BUILDER) (tag $(IMAGE_TAG); REGISTRY=... names them <REGISTRY>/{operator,runner,gateway})
	$(IMAGE_ENV) images/build.sh build

.PHONY: push
push: ## Push the images `make images` built to REGISTRY (make images push REGISTRY=ghcr.io/you/agentrun-operator)
	$(IMAGE_ENV) images/build.sh push

# Release tools, built from their Go modules at pinned versions into .lint-tools/ (ignored by git).
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := .lint-tools/actionlint-$(ACTIONLINT_VERSION)/actionlint
KREW_VERSION := v0.4.3
KREW := .lint-tools/krew-$(KREW_VERSION)/krew

$(ACTIONLINT):
	GOBIN=$(CURDIR)/$(dir $@) GOFLAGS=-mod=mod go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

$(KREW):
	GOBIN=$(CURDIR)/$(dir $@) GOFLAGS=-mod=mod go install sigs.k8s.io/krew/cmd/krew@$(KREW_VERSION)

.PHONY: actionlint
actionlint: $(ACTIONLINT) ## Lint the GitHub workflows with actionlint (and shellcheck, installed with apt when missing)
	@command -v shellcheck >/dev/null || { $(APT_INSTALL) shellcheck; }
	$(ACTIONLINT) -no-color .github/workflows/*.yml

.PHONY: krew
krew: $(KREW) ## Build krew, which the tests install the kubectl plugin's release archive with

.PHONY: plugin
plugin: ## Build dist/kubectl-agentrun (one file), its krew archive and krew manifest, as a release publishes them
	$(PYTHON) release/plugin.py --out dist

# The images on the test control plane: the node agent runs every pod from its image under runc, its securityContext
# enforced (tests/harness/nodeagent/README.md). Local names only: REGISTRY stays empty for these targets.
RUNC_ENV = AGENTRUN_TEST_CONTAINER_RUNTIME=runc AGENTRUN_TEST_IMAGE_TAG=$(IMAGE_TAG)

.PHONY: e2e-images
e2e-images: install crd-validators mcp-servers kube-binaries node-tools browser krew images ## Build the images, then run the runc runtime's tests and the whole e2e suite with every pod from its image under runc (root)
	$(RUNC_ENV) $(BIN)/pytest -p no:cacheprovider -rs tests/integration/test_runc_runtime.py tests/e2e

.PHONY: demo-images
demo-images: install kube-binaries node-tools images ## make demo with every pod (the operator's too) from its image under runc (root)
	$(RUNC_ENV) $(PY) -m tests.harness.demo

.PHONY: kubelet
kubelet: ## Build the kubelet of the control plane's version, and install Debian's containerd and CNI plugins when missing
	@command -v containerd >/dev/null && [ -x /usr/lib/cni/bridge ] \
		|| { $(APT_INSTALL) --no-install-recommends containerd containernetworking-plugins; }
	bash tests/kube/build.sh --kubelet

.PHONY: e2e-kubelet
e2e-kubelet: install kube-binaries node-tools kubelet images ## Run the images' pods on a real kubelet with containerd, a node of the test control plane beside the node agent (root)
	AGENTRUN_TEST_KUBELET=1 $(BIN)/pytest -p no:cacheprovider -rs -s tests/integration/test_kubelet_node.py
