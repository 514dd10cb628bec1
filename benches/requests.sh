#!/usr/bin/env bash
# The request-path comparison in one command: kept-alive requests through a sidecar pair
# (client-side proxy -> mTLS -> server-side proxy -> app), side by side in one run, with the app
# alone ("direct") as the baseline of every "added latency" figure.
#
#   benches/requests.sh [--quick] [--write-results] [--only ROW,...] [--rounds N] [--duration S]
#                       [--no-h2] [--no-burst] [--rates-only] [--unpinned]
#
# Rows (same app, same load generators, same certificates, made by `signet signer new` and
# `signet cert issue`: signer foo, spiffe://cluster.local/ns/foo/sa/{client,server}):
#   direct       the load generator -> the app
#   signet-http  signet --outbound (plain HTTP, routed by Host: app.foo:8000) -> mTLS ->
#                signet --inbound --protocol http -> app
#   signet-tcp   signet --tcp 127.0.0.1:P=app.foo:8000 -> mTLS -> signet --inbound --protocol tcp -> app
#   nginx        benches/requests/nginx-{client,server}.conf: plain HTTP -> mTLS (client cert,
#                server chain verified against the foo root) -> mTLS-required listener -> app;
#                upstream keepalive, proxy_http_version 1.1, Connection "" on both hops
#   haproxy      benches/requests/haproxy-{client,server}.cfg: the same, with http-reuse always
#   haproxy-h2   benches/requests/haproxy-{client,server}-h2.cfg, HTTP/2 phases only: what the Signet
#                `http` pair does with an h2 request: HTTP/2 on every hop (h2c from the generator,
#                h2 over mTLS between the proxies, h2c to the app), as gRPC needs; the nginx and
#                haproxy rows above turn HTTP/2 into HTTP/1.1 at the client-side proxy
# The app: `signet httpbin`, GET /bytes/1024 (1 KiB) for every phase, and GET /bytes/65536
# (64 KiB) for a second saturation phase.
#
# Pinning (as benches/compare.rs): both proxies of a pair on CPU 1, the load generator and the
# app on CPU 0. With --unpinned nothing is pinned (every process may run on every CPU): the two
# proxies of a pair no longer wait for each other's time slice, so fixed-rate tails tell pairs
# apart better; per-core figures then include the generator's and the app's interference.
# --rates-only runs the fixed-rate and burst phases only (no saturation). Each proxy gets one worker (signet --workers 1, nginx worker_processes 1,
# haproxy nbthread 1). On a 2-vCPU machine that is every CPU there is: at saturation either
# CPU 1 (the two proxies) or CPU 0 (generator + app) is the bottleneck; the report says which.
#
# Load generators, and why:
#   saturation, HTTP/1.1: wrk -t1 -c16 (C, cheapest per request, so the proxies, not the
#     generator, are the limit as far as possible on CPU 0)
#   saturation, HTTP/2:   h2load -c16 -m1 (h2c prior knowledge; 16 requests in flight, as wrk)
#   fixed rates (1,000 and 5,000 requests/s), HTTP/1.1 and HTTP/2: oha -q RATE
#     --latency-correction. h2load prints only min/max/mean/sd of request times (no
#     percentiles) and wrk has no fixed rate (wrk2 is not packaged in Debian); oha (crates.io)
#     has a global rate limiter, percentiles (p50/p90/p99/p99.9) and, with --latency-correction,
#     measures each request from the time it was *scheduled*, not sent: it is not strictly
#     open-loop (a request waits for one of the -c 32 connections to be free), but a late
#     request's wait counts in its latency, so coordinated omission does not hide the tail.
#     With 32 connections and sub-millisecond service times, a free connection is almost always
#     there. HTTP/2: oha --http2 over 4 connections with up to 8 streams each.
#   bursty (1,000 requests/s in bursts of 10 every 10 ms), HTTP/1.1: oha --burst-delay 10ms
#     --burst-rate 10 (the pattern under which Signet's http pair was seen to stall, issue 11);
#     oha cannot correct latency in burst mode, so each request is timed from its send.
#
# Measured per row (per round; the report shows the median over rounds):
#   requests/s at saturation, and per proxy-core: requests/s / (CPU-seconds/s of both proxies)
#   vCPU per 1,000 requests/s of EACH proxy, at the fixed rates: utime+stime from
#     /proc/<pid>/stat of the proxy's processes (nginx: master and worker) over the interval
#   RSS of each proxy (sum of VmRSS over its processes), sampled every 200 ms under load, peak
#   p50/p90/p99/p99.9 at the fixed rates, and added over direct (same protocol, same rate)
#
# Output: a markdown table on stdout and in target/requests/results.md, the raw and summarised
# JSON in target/requests/results.json and a chart in target/requests/chart.svg; with
# --write-results, benches/results/requests.{md,json,svg} instead. Rounds are interleaved (each
# round runs every row); --quick is 1 round of 3 s phases, otherwise 3 rounds of 10 s.
#
# It may install with apt-get (saying so first): nginx, haproxy, nghttp2-client (h2load), wrk,
# util-linux (taskset); and oha with `cargo install oha --locked`. Needs root for apt-get only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=0; write=0; only=""; rounds=""; secs=""; do_h2=1; do_burst=1; pinned=1; do_sat=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --write-results) write=1 ;;
    --only) only=$2; shift ;;
    --only=*) only=${1#--only=} ;;
    --rounds) rounds=$2; shift ;;
    --duration) secs=$2; shift ;;
    --no-h2) do_h2=0 ;;
    --no-burst) do_burst=0 ;;
    --unpinned) pinned=0 ;;
    --rates-only) do_sat=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "requests.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ $quick = 1 ]; then rounds=${rounds:-1}; secs=${secs:-3}; else rounds=${rounds:-3}; secs=${secs:-10}; fi
ALL_ROWS="direct signet-http signet-tcp nginx haproxy haproxy-h2"
rows=""
for r in $ALL_ROWS; do
  if [ -z "$only" ] || [[ ",$only," == *",$r,"* ]]; then rows="$rows $r"; fi
done
[ -n "$rows" ] || { echo "requests.sh: --only matches none of: $ALL_ROWS" >&2; exit 2; }
# Added latency needs the baseline.
[[ " $rows " == *" direct "* ]] || rows="direct $rows"

# --- tools -----------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "requests.sh: installing with apt-get: ${need[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v oha >/dev/null; then
  echo "requests.sh: installing oha (fixed-rate load with percentiles) with cargo install oha --locked" >&2
  cargo install oha --locked --quiet
fi
# The packaged services are not needed (this starts its own on loopback ports).
for s in nginx haproxy; do (systemctl stop "$s" 2>/dev/null || service "$s" stop 2>/dev/null) >/dev/null 2>&1 || true; done

cargo build --profile dist --quiet --bin signet   # what to deploy (Cargo.toml: LTO, one codegen unit)
SIGNET=$root/target/dist/signet
out=$root/target/requests
[ $write = 1 ] && out=$root/benches/results
mkdir -p "$out" "$root/target/requests"

work=$(mktemp -d /tmp/signet-requests.XXXXXX)
chmod 755 "$work"
started=()   # process-group leaders this script started
cleanup() {
  local p
  for p in "${started[@]}"; do
    kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

# Starts a command in a process group of its own, pinned to CPU $1; prints its pid.
spawn() { # cpu logname cmd...
  local cpu=$1 log=$2; shift 2
  [ $pinned = 1 ] || cpu=0-$(($(nproc) - 1))
  setsid taskset -c "$cpu" "$@" >"$work/$log.log" 2>&1 &
  echo $!
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port what
  local i
  for i in $(seq 1 250); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.04
  done
  echo "requests.sh: $2 did not listen on $1; its log:" >&2
  cat "$work/$2.log" >&2 2>/dev/null || true
  exit 1
}
descendants() { # pid: the pid and all its descendants
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null); do descendants "$c"; done
}
ticks() { # pid: utime+stime (clock ticks) of the pid and its descendants
  local t=0 p s
  for p in $(descendants "$1"); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }
    set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo $t
}
rss_kib() { # pid: VmRSS (KiB) summed over the pid and its descendants
  local t=0 p v
  for p in $(descendants "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    t=$((t + ${v:-0}))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)
gen_cpu=0
[ $pinned = 1 ] || gen_cpu=0-$(($(nproc) - 1))

# --- certificates ------------------------------------------------------------------------------
"$SIGNET" signer new foo --dir "$work/signers" >/dev/null 2>&1
for sa in client server; do
  "$SIGNET" cert issue --signer-dir "$work/signers/foo" --id "spiffe://cluster.local/ns/foo/sa/$sa" \
    --dns localhost --out "$work/$sa" >/dev/null 2>&1
  cat "$work/$sa/tls.crt" "$work/$sa/tls.key" > "$work/$sa/haproxy.pem"
done

# --- the app -----------------------------------------------------------------------------------
APP=$(free_port)
app_pid=$(spawn 0 app "$SIGNET" httpbin --listen "127.0.0.1:$APP" --log-level warn)
started+=("$app_pid")
wait_port "$APP" app
PATH_=/bytes/1024
BIG=/bytes/65536
BODY_BYTES=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$APP$PATH_")
HOST=app.foo:8000

# --- rows --------------------------------------------------------------------------------------
# start_row ROW sets CLI (client-side proxy pid), SRV (server-side), H1 and H2 (URLs; H2 empty: n/a)
template() { # file out key=value...
  local f=$1 o=$2; shift 2
  local args=(-e "s|@WORK@|$work|g") kv
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$root/benches/requests/$f" > "$o"
}
start_row() {
  local row=$1 p1 p2 p1h2
  CLI=""; SRV=""; H1=""; H2=""
  p1=$(free_port); p2=$(free_port); p1h2=$(free_port)
  local sig_common=(proxy --workers 1 --signer foo --log-level warn)
  case $row in
    direct)
      H1="http://127.0.0.1:$APP$PATH_"; H2=$H1 ;;
    signet-http|signet-tcp)
      local proto=${row#signet-}
      SRV=$(spawn 1 srv "$SIGNET" "${sig_common[@]}" --cert-dir "$work/server" \
        --inbound "127.0.0.1:$p2=127.0.0.1:$APP" --protocol "$proto")
      started+=("$SRV"); wait_port "$p2" srv
      local svc="$HOST=127.0.0.1:$p2,spiffe://cluster.local/ns/foo/sa/server"
      if [ "$proto" = http ]; then
        CLI=$(spawn 1 cli "$SIGNET" "${sig_common[@]}" --cert-dir "$work/client" \
          --outbound "127.0.0.1:$p1" --service "$svc")
      else
        CLI=$(spawn 1 cli "$SIGNET" "${sig_common[@]}" --cert-dir "$work/client" \
          --tcp "127.0.0.1:$p1=$HOST" --service "$svc")
      fi
      started+=("$CLI"); wait_port "$p1" cli
      H1="http://127.0.0.1:$p1$PATH_"; H2=$H1 ;;
    nginx)
      mkdir -p "$work"/n{c,s}-t{1,2,3,4,5}
      template nginx-server.conf "$work/nginx-server.conf" "LISTEN=127.0.0.1:$p2" "APP=127.0.0.1:$APP"
      template nginx-client.conf "$work/nginx-client.conf" "H1=127.0.0.1:$p1" "H2=127.0.0.1:$p1h2" "PEER=127.0.0.1:$p2"
      SRV=$(spawn 1 srv nginx -c "$work/nginx-server.conf" -p "$work")
      started+=("$SRV"); wait_port "$p2" srv
      CLI=$(spawn 1 cli nginx -c "$work/nginx-client.conf" -p "$work")
      started+=("$CLI"); wait_port "$p1" cli; wait_port "$p1h2" cli
      H1="http://127.0.0.1:$p1$PATH_"; H2="http://127.0.0.1:$p1h2$PATH_" ;;
    haproxy)
      template haproxy-server.cfg "$work/haproxy-server.cfg" "LISTEN=127.0.0.1:$p2" "APP=127.0.0.1:$APP"
      template haproxy-client.cfg "$work/haproxy-client.cfg" "H1=127.0.0.1:$p1" "H2=127.0.0.1:$p1h2" "PEER=127.0.0.1:$p2"
      SRV=$(spawn 1 srv haproxy -f "$work/haproxy-server.cfg" -db)
      started+=("$SRV"); wait_port "$p2" srv
      CLI=$(spawn 1 cli haproxy -f "$work/haproxy-client.cfg" -db)
      started+=("$CLI"); wait_port "$p1" cli; wait_port "$p1h2" cli
      H1="http://127.0.0.1:$p1$PATH_"; H2="http://127.0.0.1:$p1h2$PATH_" ;;
    haproxy-h2)
      template haproxy-server-h2.cfg "$work/haproxy-server.cfg" "LISTEN=127.0.0.1:$p2" "APP=127.0.0.1:$APP"
      template haproxy-client-h2.cfg "$work/haproxy-client.cfg" "H2=127.0.0.1:$p1h2" "PEER=127.0.0.1:$p2"
      SRV=$(spawn 1 srv haproxy -f "$work/haproxy-server.cfg" -db)
      started+=("$SRV"); wait_port "$p2" srv
      CLI=$(spawn 1 cli haproxy -f "$work/haproxy-client.cfg" -db)
      started+=("$CLI"); wait_port "$p1h2" cli
      H2="http://127.0.0.1:$p1h2$PATH_" ;;
  esac
  [ $do_h2 = 1 ] || H2=""
  # A first request must succeed end to end (mTLS, routing, the app).
  local code
  if [ -n "$H1" ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "$H1")
    [ "$code" = 200 ] || { echo "requests.sh: $row: GET $H1 answered $code" >&2; tail -n 20 "$work"/cli.log "$work"/srv.log >&2 2>/dev/null; exit 1; }
  fi
  if [ -n "$H2" ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -H "Host: $HOST" "$H2")
    [ "$code" = 200 ] || { echo "requests.sh: $row: h2c GET $H2 answered $code: HTTP/2 n/a" >&2; H2=""; }
  fi
}
stop_row() {
  local p
  for p in $CLI $SRV; do kill -KILL -- "-$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  CLI=""; SRV=""
}

# rss_sampler PID FILE: appends the RSS sum every 200 ms until killed
rss_sampler() { while :; do rss_kib "$1" >> "$2"; sleep 0.2; done; }

# measure ROUND ROW PROTO LOAD CMD...: runs the load command on CPU 0 and appends one JSON record
results=$work/records.jsonl
measure() {
  local round=$1 row=$2 proto=$3 load=$4; shift 4
  local c0=0 s0=0 c1=0 s1=0 t0 t1 sc="" ss="" o
  rm -f "$work/rss-cli" "$work/rss-srv"
  if [ -n "$CLI" ]; then
    rss_sampler "$CLI" "$work/rss-cli" & sc=$!
    rss_sampler "$SRV" "$work/rss-srv" & ss=$!
    c0=$(ticks "$CLI"); s0=$(ticks "$SRV")
  fi
  t0=$(date +%s.%N)
  o=$(taskset -c "$gen_cpu" "$@" 2>&1) || { echo "requests.sh: $row $proto $load: $1 failed: $o" >&2; o=""; }
  t1=$(date +%s.%N)
  if [ -n "$CLI" ]; then
    c1=$(ticks "$CLI"); s1=$(ticks "$SRV")
    kill "$sc" "$ss" 2>/dev/null || true; wait "$sc" "$ss" 2>/dev/null || true
  fi
  printf '%s' "$o" > "$work/out.txt"
  python3 "$root/benches/requests/parse.py" "$work/out.txt" "$1" \
    round="$round" row="$row" proto="$proto" load="$load" \
    wall="$(echo "$t1 - $t0" | bc -l)" hz="$HZ" \
    cli_ticks=$((c1 - c0)) srv_ticks=$((s1 - s0)) \
    cli_rss="$(sort -n "$work/rss-cli" 2>/dev/null | tail -1)" \
    srv_rss="$(sort -n "$work/rss-srv" 2>/dev/null | tail -1)" >> "$results"
}

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "requests.sh: $(nproc) vCPUs ($cpu_model); proxies pinned to CPU 1, load generator and app to CPU 0;" \
  "$rounds round(s) of ${secs} s phases; rows:$rows; app: signet httpbin GET $PATH_ ($BODY_BYTES-byte body)" >&2
oha_common=(oha --no-tui --output-format json --latency-correction --disable-compression)
# oha sends to http://app.foo:8000/... and connects to the row's listener instead: that sets Host
# (HTTP/1.1) and :authority (HTTP/2) alike (oha's --host sets only an HTTP/1.1 Host header).
to() { local hp=${1#http://}; echo "--connect-to $HOST:${hp%%/*}"; }
for round in $(seq 1 "$rounds"); do
  for row in $rows; do
    echo "  round $round/$rounds: $row" >&2
    start_row "$row"
    # An HTTP/2-only row (haproxy-h2) without h2 has nothing to run.
    [ -n "$H1$H2" ] || { stop_row; continue; }
    if [ -n "$H1" ]; then
      taskset -c "$gen_cpu" wrk -t1 -c16 -d1s -H "Host: $HOST" "$H1" >/dev/null 2>&1 || true   # warm-up
    else
      taskset -c "$gen_cpu" h2load -c16 -m1 -t1 -D 1 -H ":authority: $HOST" "$H2" >/dev/null 2>&1 || true
    fi
    if [ $do_sat = 1 ]; then
      if [ -n "$H1" ]; then
        measure "$round" "$row" h1 saturation wrk -t1 -c16 -d"${secs}s" --latency -H "Host: $HOST" "$H1"
      fi
      if [ -n "$H2" ]; then
        measure "$round" "$row" h2 saturation h2load -c16 -m1 -t1 -D "$secs" --warm-up-time=1 \
          -H ":authority: $HOST" "$H2"
      fi
      if [ -n "$H1" ]; then
        measure "$round" "$row" h1 sat64k wrk -t1 -c16 -d"${secs}s" --latency -H "Host: $HOST" "${H1%"$PATH_"}$BIG"
      fi
      if [ -n "$H2" ]; then
        measure "$round" "$row" h2 sat64k h2load -c16 -m1 -t1 -D "$secs" --warm-up-time=1 \
          -H ":authority: $HOST" "${H2%"$PATH_"}$BIG"
      fi
    fi
    for rate in 1000 5000; do
      if [ -n "$H1" ]; then
        measure "$round" "$row" h1 "rate$rate" "${oha_common[@]}" $(to "$H1") -z "${secs}s" -q "$rate" -c 32 "http://$HOST$PATH_"
      fi
      if [ -n "$H2" ]; then
        measure "$round" "$row" h2 "rate$rate" "${oha_common[@]}" $(to "$H2") --http2 -z "${secs}s" -q "$rate" -c 4 -p 8 "http://$HOST$PATH_"
      fi
    done
    if [ $do_burst = 1 ] && [ -n "$H1" ]; then
      measure "$round" "$row" h1 burst1000 oha --no-tui --output-format json $(to "$H1") \
        --disable-compression -z "${secs}s" --burst-delay 10ms --burst-rate 10 -c 32 "http://$HOST$PATH_"
    fi
    stop_row
  done
done

python3 "$root/benches/requests/report.py" "$results" "$out" pinned="$pinned" \
  cpus="$(nproc)" cpu="$cpu_model" rounds="$rounds" secs="$secs" body="$BODY_BYTES" path="$PATH_" \
  write="$write" nginx="$(nginx -v 2>&1 | sed 's|.*/||')" \
  haproxy="$(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}')" \
  oha="$(oha --version 2>/dev/null | awk '{print $2}')" wrk="$(wrk -v 2>&1 | awk 'NR==1 {print $2}')" \
  h2load="$(h2load --version 2>/dev/null | awk '{print $2}' | sed 's|nghttp2/||')"
