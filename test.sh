#!/usr/bin/env bash
# Runs Signet's whole test suite. Installs what the tests need first: the real httpbin (from
# PyPI, served by gunicorn) in a virtualenv under target/venv, and the real cluster
# (tests/cluster/build.sh, kubectl included). curl, openssl and Go must be on PATH (.ci/run
# installs the first two with apt-get on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")"

venv=target/venv
req=tests/requirements.txt
if [ ! -x "$venv/bin/gunicorn" ] || ! cmp -s "$req" "$venv/.requirements"; then
  echo "test.sh: installing httpbin + gunicorn into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements"
fi
command -v curl >/dev/null || { echo "test.sh: curl is required (apt-get install curl)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "test.sh: openssl is required (apt-get install openssl)" >&2; exit 1; }
# The real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and
# cert-manager's controllers, built from their Go modules into a cache keyed by go.sum: minutes
# the first time on a machine, nothing after (tests/cluster/build.sh).
command -v go >/dev/null || { echo "test.sh: Go 1.26 or later is required to build the test cluster (tests/cluster/build.sh)" >&2; exit 1; }
tests/cluster/build.sh >/dev/null
(cd tests/cluster/cert-manager && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go vet ./...)

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
