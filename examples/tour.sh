#!/usr/bin/env bash
# The README's 5-minute tour as one script: two signers, certificates, two sidecars in front of
# your own httpbin, and curl through them. Needs `signet` and `gunicorn` (with httpbin) on PATH,
# or SIGNET=/path/to/signet and GUNICORN=/path/to/gunicorn. Files go to TOUR_DIR (default: a new
# temporary directory); everything it starts is stopped when it exits. PORT_BASE moves every port
# (default 15000: admin 15000/15100, outbound 15001, inbound 15006, httpbin 8000 → BASE-7000).
set -euo pipefail
SIGNET=${SIGNET:-signet}
GUNICORN=${GUNICORN:-gunicorn}
B=${PORT_BASE:-15000}
APP=$((B - 7000)) INBOUND=$((B + 6)) OUTBOUND=$((B + 1)) ADMIN_IN=$B ADMIN_OUT=$((B + 100))
work=${TOUR_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/signet-tour.XXXXXX")}
mkdir -p "$work" && cd "$work"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return; sleep 0.1; done; echo "not ready on $1" >&2; exit 1; }
step() { printf '\n### %s\n' "$*"; }

step "1. two tenants, one signer (CA) each"
$SIGNET signer new foo --dir signers
$SIGNET signer new bar --dir signers
$SIGNET bundle signers/foo signers/bar -o bundle.yaml

step "2. workload certificates: httpbin and curl in foo, curl in bar"
$SIGNET cert issue --signer-dir signers/foo --id spiffe://cluster.local/ns/foo/sa/httpbin --dns httpbin.foo --out w/httpbin-foo
$SIGNET cert issue --signer-dir signers/foo --id spiffe://cluster.local/ns/foo/sa/curl --out w/curl-foo
$SIGNET cert issue --signer-dir signers/bar --id spiffe://cluster.local/ns/bar/sa/curl --out w/curl-bar

step "3. httpbin, its sidecar (inbound mTLS, trusts only foo), and the curl workload's sidecar (outbound)"
$GUNICORN -b 127.0.0.1:$APP --no-control-socket httpbin:app 2>gunicorn.log & pids+=($!)
$SIGNET proxy --cert-dir w/httpbin-foo --bundle bundle.yaml --signer foo \
  --inbound 127.0.0.1:$INBOUND=127.0.0.1:$APP --protocol http --admin 127.0.0.1:$ADMIN_IN 2>httpbin-sidecar.log & pids+=($!)
$SIGNET proxy --cert-dir w/curl-foo --bundle bundle.yaml --signer foo --outbound 127.0.0.1:$OUTBOUND \
  --service httpbin.foo:8000=127.0.0.1:$INBOUND,spiffe://cluster.local/ns/foo/sa/httpbin --admin 127.0.0.1:$ADMIN_OUT 2>curl-sidecar.log & pids+=($!)
wait_ready $ADMIN_IN; wait_ready $ADMIN_OUT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$APP/status/200" >/dev/null && break; sleep 0.1; done

step "4. the app calls httpbin.foo through its sidecar (plain HTTP in, mTLS between sidecars)"
http_proxy=http://127.0.0.1:$OUTBOUND curl -sS http://httpbin.foo:8000/headers

step "5. a client with a foo certificate may call the inbound directly; a bar client may not"
curl -sS -o /dev/null -w 'foo client: HTTP %{http_code}\n' --cacert signers/foo/ca.crt \
  --cert w/curl-foo/tls.crt --key w/curl-foo/tls.key \
  --resolve httpbin.foo:$INBOUND:127.0.0.1 https://httpbin.foo:$INBOUND/get
if curl -sS -o /dev/null --cacert signers/foo/ca.crt --cert w/curl-bar/tls.crt --key w/curl-bar/tls.key \
  --resolve httpbin.foo:$INBOUND:127.0.0.1 https://httpbin.foo:$INBOUND/get; then
  echo "bar client: unexpectedly accepted" >&2; exit 1
else
  echo "bar client: refused (curl exit $?)"
fi
sleep 0.2
echo "httpbin's sidecar logged:"; grep rejected httpbin-sidecar.log | sed 's/^/  /'

step "6. what the sidecars hold and count"
curl -sS http://127.0.0.1:$ADMIN_IN/certs | head -8
curl -sS http://127.0.0.1:$ADMIN_IN/metrics | grep -E 'result="(ok|unknown_signer)"'
echo; echo "tour done (files in $work; the sidecars and httpbin stop now)"
