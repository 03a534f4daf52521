#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests run on, from published Go modules, once per
# machine and version: etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
#
#   tests/kube/build.sh            # the default minor (tests/kube/default-minor)
#   KUBE_MINOR=1.34 tests/kube/build.sh
#   tests/kube/build.sh --print-dir   # only print where the binaries of the selected minor live
#   tests/kube/build.sh --kubelet     # the kubelet too, into <kube dir>/node (make kubelet; not needed by make test)
#
# The versions are pinned by the wrapper modules beside this script (k8s-<minor>/go.mod and go.sum,
# etcd/go.mod and go.sum); tests/kube/pin.sh writes a new one. Binaries go to
# .tools/kube/<kubernetes version>/ and .tools/etcd/<etcd version>/; a folder that holds a finished
# build is reused as it is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0

minor=${KUBE_MINOR:-$(cat "$here/default-minor")}
kube_module="$here/k8s-$minor"
if [ ! -f "$kube_module/go.mod" ]; then
  echo "tests/kube/build.sh: no wrapper module for Kubernetes $minor (tests/kube/k8s-$minor); pin one with tests/kube/pin.sh" >&2
  exit 2
fi
module_version() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }
kube_version=$(module_version "$kube_module" k8s.io/kubernetes)
etcd_version=$(module_version "$here/etcd" go.etcd.io/etcd/server/v3)
kube_dir="$root/.tools/kube/$kube_version"
etcd_dir="$root/.tools/etcd/$etcd_version"
if [ "${1:-}" = "--print-dir" ]; then
  echo "$kube_dir $etcd_dir"
  exit 0
fi

# What upstream's release build does (hack/lib/golang.sh): static, trimmed, with the version stamped so
# that /version and kubectl report the real release instead of v0.0.0-master.
version_flags() {
  local version=$1 major minor_number flags="-s -w"
  major=${version#v}; major=${major%%.*}
  minor_number=${version#v*.}; minor_number=${minor_number%%.*}
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $package.gitVersion=$version -X $package.gitMajor=$major -X $package.gitMinor=$minor_number"
    flags+=" -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build() {  # build <module dir> <output dir> <ldflags> <package>...
  local module=$1 out=$2 ldflags=$3
  shift 3
  if [ -f "$out/.complete" ]; then
    return 0
  fi
  echo "building $* into ${out#"$root"/} (cold: tens of minutes on 2 cores; later runs reuse it)" >&2
  mkdir -p "$out"
  local started=$SECONDS
  (cd "$module" && go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$out/" "$@")
  echo "built in $((SECONDS - started)) s" >&2
  touch "$out/.complete"
}

build "$here/etcd" "$etcd_dir" "-s -w" go.etcd.io/etcd/server/v3
# etcd's main package is the root of go.etcd.io/etcd/server/v3, so `go build` names the binary "server".
[ -f "$etcd_dir/etcd" ] || mv "$etcd_dir/server" "$etcd_dir/etcd"
build "$kube_module" "$kube_dir" "$(version_flags "$kube_version")" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
if [ "${1:-}" = "--kubelet" ]; then
  build "$kube_module" "$kube_dir/node" "$(version_flags "$kube_version")" k8s.io/kubernetes/cmd/kubelet
fi
echo "$kube_dir $etcd_dir"
