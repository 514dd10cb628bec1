#!/usr/bin/env bash
# The side-by-side handshake benchmark in one command: installs the peers it compares Signet
# with, if they are missing, then runs benches/compare.rs, which prints a markdown table and
# writes it, the raw JSON and an SVG chart to target/compare/ (or, with --write-results, over the
# committed benches/results/).
#
# Options pass through: --quick (3 s runs), --duration SECS, --concurrency N, --only PEER,...,
# --idle-connections N, --write-results.
#
# What it may install with apt-get (Debian/Ubuntu; it says which before it does):
#   nginx, libnginx-mod-stream  nginx as an mTLS peer, HTTP and stream (L4) modes
#   haproxy                     HAProxy as an mTLS peer
#   stunnel4                    stunnel as an mTLS peer
#   util-linux                  taskset, to pin servers and clients to their CPUs
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "compare.sh: installing the benchmark's peers with apt-get: ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The packaged services are not needed (the benchmark starts its own on loopback ports).
for s in nginx haproxy stunnel4; do (systemctl stop "$s" 2>/dev/null || service "$s" stop 2>/dev/null) || true; done
# The dist profile (Cargo.toml): what to deploy, so what is measured.
exec cargo bench --profile dist --bench compare -- "$@"
