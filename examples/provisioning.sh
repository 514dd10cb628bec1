#!/usr/bin/env bash
# README's provisioning walk-through as one script: the authority with a per-namespace
# policy, sidecars that get their certificates by CSR, a refused request, and a root rotation of
# signer foo with no restart. Needs `signet` and `gunicorn` (with httpbin) on PATH, or
# SIGNET=... GUNICORN=...; PORT_BASE moves every port (default 15000).
set -euo pipefail
SIGNET=${SIGNET:-signet}
GUNICORN=${GUNICORN:-gunicorn}
B=${PORT_BASE:-15000}
APP=$((B - 7000)) INBOUND=$((B + 6)) OUTBOUND=$((B + 1)) CA=$((B + 12)) CA_ADMIN=$((B + 14)) ADMIN_IN=$B ADMIN_OUT=$((B + 100))
work=$(mktemp -d "${TMPDIR:-/tmp}/signet-provisioning.XXXXXX")
cd "$work"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_ok() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
anchor() { curl -s "http://127.0.0.1:$1/certs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["anchor_sha256"][:16])'; }
roots() { curl -s "http://127.0.0.1:$1/certs" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["certificates"][0]["ca_cert"]))'; }
step() { printf '\n### %s\n' "$*"; }

step "1. signers, bundle, policy (foo → foo, bar → bar, default istio-system), tokens"
for s in istio-system foo bar; do $SIGNET signer new $s --dir signers >/dev/null; done
$SIGNET bundle signers/istio-system signers/foo signers/bar -o bundle.yaml
cat > policy.yaml <<'YAML'
defaultSigner: istio-system
approvableSigners: [istio-system, foo, bar]
namespaces:
  foo: {signer: foo}
  bar: {signer: bar}
YAML
$SIGNET authority token --tokens tokens.yaml --namespace foo --service-account httpbin --out httpbin-foo.token
$SIGNET authority token --tokens tokens.yaml --namespace foo --service-account curl --out curl-foo.token

step "2. the authority (Istio's CA API on $CA, TLS certificate from istio-system)"
$SIGNET authority serve --signers-dir signers --bundle bundle.yaml --signing-policy policy.yaml --tokens tokens.yaml \
  --listen 127.0.0.1:$CA --admin 127.0.0.1:$CA_ADMIN 2>ca.log & AUTHORITY=$!; pids+=($AUTHORITY)
wait_ok "http://127.0.0.1:$CA_ADMIN/ready"

step "3. httpbin and two sidecars that make a key + CSR and ask the service (no certificate files)"
$GUNICORN -b 127.0.0.1:$APP --no-control-socket httpbin:app 2>gunicorn.log & pids+=($!)
AUTH=(--authority 127.0.0.1:$CA --authority-ca signers/istio-system/ca.crt --bundle bundle.yaml)
$SIGNET proxy "${AUTH[@]}" --token-file httpbin-foo.token --id spiffe://cluster.local/ns/foo/sa/httpbin \
  --inbound 127.0.0.1:$INBOUND=127.0.0.1:$APP --protocol http --admin 127.0.0.1:$ADMIN_IN 2>httpbin-sidecar.log & SERVER=$!; pids+=($SERVER)
$SIGNET proxy "${AUTH[@]}" --token-file curl-foo.token --id spiffe://cluster.local/ns/foo/sa/curl \
  --outbound 127.0.0.1:$OUTBOUND --service httpbin.foo:8000=127.0.0.1:$INBOUND,spiffe://cluster.local/ns/foo/sa/httpbin \
  --admin 127.0.0.1:$ADMIN_OUT 2>curl-sidecar.log & CLIENT=$!; pids+=($CLIENT)
wait_ok "http://127.0.0.1:$ADMIN_IN/ready"; wait_ok "http://127.0.0.1:$ADMIN_OUT/ready"
wait_ok "http://127.0.0.1:$APP/status/200"
grep -h "ready:" httpbin-sidecar.log curl-sidecar.log | sed 's/^.*ready: /  /'
http_proxy=http://127.0.0.1:$OUTBOUND curl -sS -o /dev/null -w 'curl.foo → httpbin.foo: HTTP %{http_code}\n' http://httpbin.foo:8000/get

step "4. a workload of foo naming signer bar is refused (the policy ties foo to signer foo)"
$SIGNET authority token --tokens tokens.yaml --namespace foo --service-account rogue --out rogue.token 2>/dev/null
sleep 1.5   # the service picks up the new token
$SIGNET proxy "${AUTH[@]}" --signer bar --token-file rogue.token --id spiffe://cluster.local/ns/foo/sa/rogue \
  --inbound 127.0.0.1:$((B + 7))=127.0.0.1:$APP --admin 127.0.0.1:$((B + 200)) 2>rogue.log & ROGUE=$!
sleep 2; kill $ROGUE; wait $ROGUE 2>/dev/null || true
grep -m1 -o "no valid certificate: .*SignerNotAllowedForNamespace[^;]*" rogue.log | sed 's/^/  /'
curl -s http://127.0.0.1:$CA_ADMIN/requests | python3 -c '
import json,sys
for r in json.load(sys.stdin)["items"]:
    c = r["status"]["conditions"][0]
    print("  %s %-40s %-44s %s %s" % (r["metadata"]["name"], r["spec"]["username"], r["spec"]["signerName"], c["type"], c["reason"]))'

step "5. rotate signer foo's root, no restart"
echo "  before: both sidecars anchor to $(anchor $ADMIN_IN) / $(anchor $ADMIN_OUT)"
$SIGNET signer new foo --dir new-signers >/dev/null
# 1) add the new root next to the old one; every sidecar reloads the bundle and trusts both
$SIGNET bundle signers/istio-system signers/foo new-signers/foo signers/bar -o bundle.yaml 2>/dev/null
for _ in $(seq 50); do [ "$(roots $ADMIN_IN)$(roots $ADMIN_OUT)" = 22 ] && break; sleep 0.1; done
echo "  step 1: roots trusted for foo: $(roots $ADMIN_IN) / $(roots $ADMIN_OUT)"
# 2) switch signer foo to the new CA; SIGHUP makes the service reload it now (it would within two
#    watch intervals: a file is acted on once it holds still), then the sidecars renew now
cp new-signers/foo/tls.key new-signers/foo/tls.crt new-signers/foo/ca.crt signers/foo/
kill -HUP $AUTHORITY; sleep 0.5; kill -HUP $SERVER $CLIENT
NEW=$(python3 -c 'import hashlib,base64,sys; b="".join(l for l in open("new-signers/foo/ca.crt").read().splitlines() if "-----" not in l); print(hashlib.sha256(base64.b64decode(b)).hexdigest()[:16])')
for _ in $(seq 100); do [ "$(anchor $ADMIN_IN)$(anchor $ADMIN_OUT)" = "$NEW$NEW" ] && break; sleep 0.1; done
echo "  step 2: both sidecars now anchor to the new root $(anchor $ADMIN_IN) / $(anchor $ADMIN_OUT)"
# 3) remove the old root
$SIGNET bundle signers/istio-system signers/foo signers/bar -o bundle.yaml 2>/dev/null
for _ in $(seq 50); do [ "$(roots $ADMIN_IN)$(roots $ADMIN_OUT)" = 11 ] && break; sleep 0.1; done
echo "  step 3: roots trusted for foo: $(roots $ADMIN_IN) / $(roots $ADMIN_OUT)"
http_proxy=http://127.0.0.1:$OUTBOUND curl -sS -o /dev/null -w 'curl.foo → httpbin.foo after the rotation: HTTP %{http_code}\n' http://httpbin.foo:8000/get
echo; echo "provisioning done (files in $work)"
