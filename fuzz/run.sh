#!/usr/bin/env bash
# Reruns the fuzz targets on their committed corpora, one after the other, one process each
# (nice'd), and exits non-zero if any target crashes, hangs, leaks or runs out of memory.
#
#   fuzz/run.sh [-s SECONDS] [-n RUNS] [-k] [TARGET...]
#
#   -s SECONDS  time per target (default 60; 0 = no time limit, then give -n)
#   -n RUNS     executions per target (default: unlimited); with -s, whichever comes first
#   -k          keep new inputs in fuzz/corpus/<target> (default: a temporary directory, so
#               the committed corpora stay as they are; minimise before committing)
#   TARGET...   default: all of them
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). Crash inputs land in
# fuzz/artifacts/<target>/; reproduce one with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=60 runs=-1 keep=0
while getopts "s:n:kh" opt; do
    case $opt in
    s) seconds=$OPTARG ;;
    n) runs=$OPTARG ;;
    k) keep=1 ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

cargo +nightly fuzz build
failed=()
for t in "${targets[@]}"; do
    echo "=== $t: ${seconds}s / $runs runs" >&2
    dirs=("corpus/$t")
    if [ "$keep" = 0 ]; then
        tmp=$(mktemp -d)
        dirs=("$tmp" "corpus/$t")
    fi
    if ! nice -n 15 cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -runs="$runs" \
        -rss_limit_mb=2048 -timeout=10 -detect_leaks=1 -print_final_stats=1; then
        failed+=("$t")
    fi
    [ "$keep" = 1 ] || rm -rf "$tmp"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "all targets passed" >&2
