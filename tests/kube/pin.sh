#!/usr/bin/env bash
# Writes the wrapper module that pins one Kubernetes release for tests/kube/build.sh:
#
#   tests/kube/pin.sh v1.37.2      # writes tests/kube/k8s-1.37/go.mod and go.sum
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and
# replaces them with folders of its own repository, so a module that builds its commands must replace
# each with the published v0.<minor>.<patch>. The list changes between releases, so it is read from the
# release's own go.mod, with its go and godebug lines.
set -euo pipefail
version=${1:?usage: tests/kube/pin.sh vMAJOR.MINOR.PATCH}
here=$(cd "$(dirname "$0")" && pwd)
export GOWORK=off
minor=${version#v}; minor=${minor%.*}
staging_version="v0.${version#v1.}"
upstream_mod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
out="$here/k8s-$minor"
mkdir -p "$out"
{
  echo "// Pins Kubernetes $version for tests/kube/build.sh. Written by tests/kube/pin.sh; do not edit."
  echo "module agentrun.dev/tests/kube/k8s-$minor"
  echo
  grep -E '^(go|godebug) ' "$upstream_mod"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  echo "replace ("
  sed -n -E "s#^[[:space:]]*(k8s.io/[a-z0-9-]+) => \./staging/.*#\t\1 => \1 $staging_version#p" "$upstream_mod"
  echo ")"
} > "$out/go.mod"
rm -f "$out/go.sum"
# At the release's own version: without one, `go get` would take the newest k8s.io/kubernetes.
(cd "$out" && go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$version" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@$version" "k8s.io/kubernetes/cmd/kube-scheduler@$version" \
  "k8s.io/kubernetes/cmd/kubelet@$version")
echo "pinned Kubernetes $version in ${out#"$here"/}" >&2
