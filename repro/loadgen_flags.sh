#!/usr/bin/env bash
# breaker4 (issue 15, item 4): odd loadgen flags. Build first:
#   CARGO_TARGET_DIR=/work/targets/breaker4 cargo build --release -p idempotency-loadgen
# Every line must end in a clear clap error or a normal run; none may panic.
# Before the fix `--seconds 0` ran and reported rows of "p50 0.00 µs ... 0 ops/s".
# `--concurrency 5000000` spawns that many tasks: under `ulimit -v 3000000` the process aborts
# with "memory allocation of N bytes failed" (no upper bound on --concurrency; not fixed).
set -u
L=${CARGO_TARGET_DIR:-/work/targets/breaker4}/release/idempotency-loadgen
O=$(mktemp -d)
for args in "--rounds 0" "--seconds 0" "--seconds nan" "--seconds inf" "--seconds 1e30" \
    "--warmup 1e30" "--rounds 18446744073709551616" "--concurrency 0" "--seconds 0.0000001"; do
    echo "== $args"
    # shellcheck disable=SC2086
    timeout 30 "$L" --quick --backends memory-store --scenarios fresh --concurrency 1 --out "$O" $args 2>&1 | tail -2
done
echo "== --concurrency 5000000 (3 GB address-space limit)"
(ulimit -v 3000000; timeout 40 "$L" --quick --backends memory-store --scenarios fresh \
    --concurrency 5000000 --out "$O" 2>&1 | tail -2)
rm -rf "$O"
