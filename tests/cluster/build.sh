#!/usr/bin/env bash
# Builds the real cluster the tests run against from published Go modules, into a cache keyed
# by each build module's go.mod and go.sum and the Go version, and prints the directory that
# holds the binaries (etcd, kube-apiserver, kube-controller-manager, kubectl,
# cert-manager-controller) and cert-manager's CRDs (crds/). A warm cache costs nothing; a cold
# one downloads the modules (about 1 GB) and builds for some minutes.
#
#   tests/cluster/build.sh            # prints the directory
#   SIGNET_CLUSTER_CACHE=DIR tests/cluster/build.sh   # cache elsewhere (default ~/.cache/signet-cluster)
#
# Everything is CGO_ENABLED=0 with GOTOOLCHAIN=local: the machine's Go builds it, or this
# says which Go the modules need.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SIGNET_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/signet-cluster}
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
command -v go >/dev/null || { echo "build.sh: Go is required to build the cluster (https://go.dev/dl, 1.26 or later)" >&2; exit 1; }
gover=$(go env GOVERSION)
key=$(cat "$here"/kubernetes/go.mod "$here"/kubernetes/go.sum "$here"/cert-manager/go.mod \
  "$here"/cert-manager/go.sum "$here"/cert-manager/main.go "$here"/build.sh | { cat; echo "$gover"; } | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi
rm -rf "$out.partial"
mkdir -p "$out.partial/crds"
log() { echo "build.sh: $*" >&2; }
start=$SECONDS

# Kubernetes: stamp the release so `kubectl version` and the API server's /version say it.
k8s=$(cd "$here/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=${k8s#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitMajor=1"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
log "building etcd, kube-apiserver, kube-controller-manager and kubectl $k8s"
(cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$out.partial/" \
  go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
for name in server v3; do [ ! -f "$out.partial/$name" ] || mv "$out.partial/$name" "$out.partial/etcd"; done

cm=$(cd "$here/cert-manager" && go list -m -f '{{.Version}}' github.com/cert-manager/cert-manager)
log "building cert-manager-controller $cm"
(cd "$here/cert-manager" && go build -trimpath -ldflags "-s -w" -o "$out.partial/cert-manager-controller" .)
crds=$(cd "$here/cert-manager" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)/deploy/crds
cp "$crds"/*.yaml "$out.partial/crds/"
chmod -R u+w "$out.partial/crds"

touch "$out.partial/.complete"
rm -rf "$out"
mv "$out.partial" "$out"
# Older builds of other versions are left for other checkouts; the oldest beyond three go.
ls -1dt "$cache"/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
log "built in $((SECONDS - start)) s"
echo "$out"
