#!/usr/bin/env bash
# Fuzzes the pure rules that read hostile input: Cloud API message bodies, webhook bodies, uploaded
# CSV and phone numbers (fuzz/fuzz_targets/). Each target runs for a time or a number of inputs;
# any panic, hang (10 s) or leak fails the run, and the input that caused it is kept under
# fuzz/artifacts/<target>/.
#
#   deploy/fuzz.sh                    # 30 s per target (CI)
#   deploy/fuzz.sh --seconds 600      # longer
#   deploy/fuzz.sh --runs 10000000    # a fixed number of inputs per target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
limit=(-max_total_time=30)
case "${1:-}" in
  --seconds) limit=(-max_total_time="$2") ;;
  --runs) limit=(-runs="$2") ;;
  "") ;;
  *) echo "usage: deploy/fuzz.sh [--seconds N | --runs N]" >&2; exit 2 ;;
esac
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
# libFuzzer's instrumentation flags are unstable rustc options; the one toolchain here is stable.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/pregon-ci/fuzz-target}"
# -s none: the code under test is safe Rust, so the sanitizer would find nothing a panic does not;
# -a keeps debug assertions (integer overflow) in the optimised build.
flags=(-s none -O -a)
cargo fuzz build "${flags[@]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  echo "== $target"
  status=0
  cargo fuzz run "${flags[@]}" "$target" -- "${limit[@]}" -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
