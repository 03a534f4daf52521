#!/usr/bin/env bash
# Make the images' Python base from Debian's own packages, with no registry: debootstrap the Debian release the
# official python slim images use, then commit two images with buildah:
#   $BUILD_TAG    Debian minbase + python3, python3-venv, passwd (useradd): the Dockerfiles' build stage (a shell, pip in a venv).
#   $RUNTIME_TAG  distroless-style: only python3.11 and the libraries it links, CA certificates, /tmp, the
#                 passwd entries; no shell, no apt, no dpkg tool. The Dockerfiles' final stage.
# Both are tagged with a hash of this script, so `make images` rebuilds them only when this script changes.
# Usage: images/base.sh [print-tags]      (needs root, debootstrap and buildah; `make image-tools` installs them)
set -euo pipefail
cd "$(dirname "$0")"

RELEASE=bookworm                  # the release of python:3.11-slim-bookworm; its python3 is 3.11
PYTHON=python3.11
INPUTS_HASH=$(cat base.sh runtime_closure.py | sha256sum | cut -c1-12)
BUILD_TAG=localhost/agentrun-base/python-build:${RELEASE}-${INPUTS_HASH}
RUNTIME_TAG=localhost/agentrun-base/python:${RELEASE}-${INPUTS_HASH}
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

if [[ "${1:-}" == print-tags ]]; then
    echo "BASE_BUILD_IMAGE=$BUILD_TAG"
    echo "BASE_RUNTIME_IMAGE=$RUNTIME_TAG"
    exit 0
fi
if "${BUILDAH[@]}" inspect --type image "$BUILD_TAG" >/dev/null 2>&1 \
    && "${BUILDAH[@]}" inspect --type image "$RUNTIME_TAG" >/dev/null 2>&1; then
    echo "base images up to date: $BUILD_TAG $RUNTIME_TAG"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/agentrun-base.XXXXXX")
cleanup() {
    for mounted in "$work"/rootfs/{proc,sys,dev/pts,dev}; do mountpoint -q "$mounted" && umount "$mounted"; done
    rm -rf "$work"
}
trap cleanup EXIT
rootfs=$work/rootfs

# DEBIAN_MIRROR: empty means debootstrap's own default mirror.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd "$RELEASE" "$rootfs" ${DEBIAN_MIRROR:-}

# Security and point-release updates, from the same sources the host uses when it runs the same release.
host_release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [[ "$host_release" == "$RELEASE" ]]; then
    cp -a /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
    [[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
    mount --bind /proc "$rootfs/proc"
    chroot "$rootfs" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get upgrade -y -qq
    umount "$rootfs/proc"
else
    echo "warning: the host is not Debian $RELEASE: the base has $RELEASE's release packages without later updates" >&2
fi
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

commit() {  # commit DIR TAG: a scratch image holding DIR's tree
    local container
    container=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" copy --quiet "$container" "$1" / >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd "[\"/usr/bin/$PYTHON\"]" --label org.opencontainers.image.base.name="debian:$RELEASE" "$container"
    "${BUILDAH[@]}" commit --quiet --rm "$container" "$2" >/dev/null
    echo "committed $2"
}
# `python` as on the official images: the Dockerfiles run `python -m venv`.
ln -sf "$PYTHON" "$rootfs/usr/bin/python"
commit "$rootfs" "$BUILD_TAG"

# The runtime tree: the files of python3.11's dependency closure (by dpkg's own lists), plus what a process needs.
runtime=$work/runtime
python3 runtime_closure.py "$rootfs" "$runtime" "$PYTHON"
commit "$runtime" "$RUNTIME_TAG"
