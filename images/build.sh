#!/usr/bin/env bash
# Build the operator, runner and stream gateway images from their Dockerfiles, and push them when asked.
# Usage (from `make images` / `make push`, docs/images.md):
#   images/build.sh build|push
# Environment:
#   IMAGE_BUILDER  buildah (daemonless: storage driver vfs, chroot isolation) or docker; default: docker when its
#                  daemon answers, else buildah.
#   IMAGE_BASE     debian: the base images/base.sh makes from Debian packages (no registry needed); official:
#                  the Dockerfiles' default python slim image. Default: debian with buildah, official with docker.
#   REGISTRY       push target, e.g. ghcr.io/you/agentrun-operator: images are named $REGISTRY/{operator,runner,
#                  gateway}; empty: the local names agentrun-operator, agentrun-runner, agentrun-stream-gateway.
#   IMAGE_TAG      tag of the three images (default: dev).
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-build}
builder=${IMAGE_BUILDER:-$(docker info >/dev/null 2>&1 && echo docker || echo buildah)}
base=${IMAGE_BASE:-$([[ $builder == buildah ]] && echo debian || echo official)}
tag=${IMAGE_TAG:-dev}
if [[ -n "${REGISTRY:-}" ]]; then
    names=("${REGISTRY%/}/operator" "${REGISTRY%/}/runner" "${REGISTRY%/}/gateway")
else
    names=(agentrun-operator agentrun-runner agentrun-stream-gateway)
fi
dockerfiles=(operator/Dockerfile runner_image/Dockerfile gateway/Dockerfile)

case $builder in
    buildah) tool=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}") ;;
    docker) tool=(docker) ;;
    *) echo "IMAGE_BUILDER=$builder: use buildah or docker" >&2; exit 2 ;;
esac

if [[ $action == push ]]; then
    [[ -n "${REGISTRY:-}" ]] || { echo "make push needs REGISTRY=<registry>/<path>, e.g. ghcr.io/you/agentrun-operator" >&2; exit 2; }
    for name in "${names[@]}"; do "${tool[@]}" push "$name:$tag"; done
    exit 0
fi

args=()
case $base in
    debian)
        images/base.sh
        eval "$(images/base.sh print-tags)"
        args+=(--build-arg "PYTHON_IMAGE=$BASE_BUILD_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_RUNTIME_IMAGE")
        ;;
    official) ;;
    *) echo "IMAGE_BASE=$base: use debian or official" >&2; exit 2 ;;
esac
if [[ $builder == buildah ]]; then
    # --layers caches each step, so a rebuild with unchanged sources takes seconds.
    args+=(--isolation chroot --layers)
    if [[ -n "${PIP_CERT:-}" ]]; then  # the host's CA bundle for pip inside the build, mounted, not copied
        args+=(--volume "$PIP_CERT:/etc/agentrun-build-ca.pem:ro" --build-arg PIP_CERT=/etc/agentrun-build-ca.pem)
    fi
fi
for i in "${!names[@]}"; do
    echo "== ${names[$i]}:$tag from ${dockerfiles[$i]}"
    "${tool[@]}" build "${args[@]}" -f "${dockerfiles[$i]}" -t "${names[$i]}:$tag" .
done
