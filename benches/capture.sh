#!/usr/bin/env bash
# The request path through a sidecar pair, captured (iptables) and explicit (http_proxy), side
# by side in one run, with the app alone as the baseline. Two pods (network namespaces on a
# bridge of their own): the server pod runs `signet httpbin` (hyper) on 0.0.0.0:8000 behind its
# sidecar's captured inbound; the client pod runs wrk, and one sidecar that has both a captured
# outbound (15001) and an explicit HTTP proxy (127.0.0.1:15080). wrk keeps its connections open,
# so this measures requests, not handshakes. Needs root (namespaces, iptables) and wrk.
#
# Usage: sudo benches/capture.sh [SECONDS=10] [CONNECTIONS=16]
# Prints requests/s, p50/p99 latency (wrk --latency) and the sidecars' CPU seconds, whence
# requests per sidecar-core-second: requests / (CPU of both sidecars).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-16}
[ "$(id -u)" -eq 0 ] || { echo "capture.sh: needs root (network namespaces, iptables)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "capture.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --profile dist --quiet --bin signet   # what to deploy (Cargo.toml: LTO, one codegen unit)
bin=$PWD/target/dist/signet
work=$(mktemp -d)
p=sgbench
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$p-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$work"
}
trap cleanup EXIT
cleanup; work=$(mktemp -d)

ip netns add $p-hub
ip -n $p-hub link add br0 type bridge && ip -n $p-hub link set br0 up
i=0
for pod in srv cli; do
  ip netns add $p-$pod
  ip -n $p-$pod link add eth0 type veth peer name p$i netns $p-hub
  ip -n $p-$pod addr add 10.89.0.$((i + 2))/24 dev eth0
  ip -n $p-$pod link set eth0 up && ip -n $p-$pod link set lo up
  ip -n $p-hub link set p$i master br0 && ip -n $p-hub link set p$i up
  mkdir -p /etc/netns/$p-$pod
  printf '127.0.0.1 localhost\n10.89.0.2 httpbin.foo\n' > /etc/netns/$p-$pod/hosts
  i=$((i + 1))
done

$bin signer new foo --dir "$work/signers" >/dev/null 2>&1
$bin cert issue --signer-dir "$work/signers/foo" --id spiffe://cluster.local/ns/foo/sa/httpbin --out "$work/srv" >/dev/null 2>&1
$bin cert issue --signer-dir "$work/signers/foo" --id spiffe://cluster.local/ns/foo/sa/curl --out "$work/cli" >/dev/null 2>&1
for pod in srv cli; do ip netns exec $p-$pod "$bin" iptables --proxy-gid 1337 >/dev/null; done
side() { # pod, extra args...
  local pod=$1; shift
  ip netns exec $p-$pod setpriv --regid 1337 --clear-groups -- "$bin" proxy --cert-dir "$work/$pod" --signer foo \
    --admin 127.0.0.1:15000 --log-level warn "$@" >"$work/$pod.log" 2>&1 &
  echo $!
}
ip netns exec $p-srv "$bin" httpbin --listen 0.0.0.0:8000 >/dev/null 2>&1 &
disown
srv_pid=$(side srv --capture-inbound 0.0.0.0:15006)
cli_pid=$(side cli --capture-outbound 0.0.0.0:15001 --outbound 127.0.0.1:15080 \
  --service httpbin.foo:8000=10.89.0.2:8000,spiffe://cluster.local/ns/foo/sa/httpbin)
sleep 1
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }   # utime + stime, in seconds (USER_HZ 100)

run() { # label, netns, wrk args...
  local label=$1 ns=$2; shift 2
  local a0 b0 a1 b1 out rps p50 p99 cpu_s
  a0=$(cpu "$srv_pid"); b0=$(cpu "$cli_pid")
  out=$(ip netns exec "$ns" wrk -t1 -c"$conns" -d"${secs}s" --latency "$@")
  a1=$(cpu "$srv_pid"); b1=$(cpu "$cli_pid")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  cpu_s=$(echo "$a1 $a0 $b1 $b0" | awk '{printf "%.2f", ($1 - $2) + ($3 - $4)}')
  local per_core
  per_core=$(echo "$rps $secs $cpu_s" | awk '{ if ($3 >= 0.1) printf "%.0f", $1 * $2 / $3; else print "-" }')
  printf "| %-34s | %10s | %8s | %8s | %13s | %12s |\n" "$label" "$rps" "$p50" "$p99" "$cpu_s" "$per_core"
}
echo "wrk -t1 -c$conns -d${secs}s, keep-alive, GET /get from the built-in httpbin; $(nproc) CPUs"
printf "| %-34s | %10s | %8s | %8s | %13s | %12s |\n" "path" "requests/s" "p50" "p99" "sidecar CPU s" "req/core-s"
printf "|%s|%s|%s|%s|%s|%s|\n" "------------------------------------" "------------" "----------" "----------" "---------------" "--------------"
run "app alone (server pod, loopback)" $p-srv http://127.0.0.1:8000/get
run "captured (curl http://httpbin.foo)" $p-cli http://httpbin.foo:8000/get
run "explicit (http_proxy, Host header)" $p-cli -H "Host: httpbin.foo:8000" http://127.0.0.1:15080/get
