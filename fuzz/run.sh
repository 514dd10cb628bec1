#!/usr/bin/env bash
# Bounded fuzzing of Signet's parsers: the trust bundle, the sidecar config, PEM (certificates,
# keys, revocation lists), CSRs, SPIFFE IDs and allow-list patterns, XFCC, the outbound
# proxy's routing of a request head, and the HTTP/1.1 relay's reading of whole request and
# response streams (relay_requests, relay_responses: what it sends is framed exactly as what it
# read). Each target runs for SECONDS (default 20, so about three minutes in all after the
# build) from its committed corpus in fuzz/corpus/<target>; what it
# finds on the way goes to fuzz/target/found/<target> (merge it with
# `cargo +nightly fuzz cmin <target> fuzz/corpus/<target>` after copying it in).
#
# A panic, a sanitizer report, more than 1 GiB of memory or any single allocation over 256 MiB
# fails the run; the input is left in fuzz/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`).
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz (installed here
# on first use).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(trust_bundle config pem csr spiffe_id xfcc outbound_request relay_requests relay_responses)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo +nightly fuzz build -O >/dev/null
failed=0
for t in "${targets[@]}"; do
  mkdir -p "target/found/$t" "corpus/$t"
  log="target/fuzz-$t.log"
  if cargo +nightly fuzz run -O "$t" "target/found/$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    echo "fuzz $t: ok, ${runs:-?} inputs in ${secs}s, peak ${rss:-?} MB"
  else
    echo "fuzz $t: FAILED (see fuzz/$log and fuzz/artifacts/$t/)"
    grep -E "panicked|ERROR: |SUMMARY" "$log" | head -5 || true
    failed=1
  fi
done
exit $failed
