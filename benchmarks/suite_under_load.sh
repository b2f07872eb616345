#!/usr/bin/env bash
# The test suite while both cores are busy: two CPU-bound processes spin for the whole time while
# the README's test command (`bash .ci/run`) runs N times in a row. For each run: its exit code,
# its duration, and what it left in the temporary folder (a fresh TMPDIR for this script, so pytest's
# folders, the CI environments and anything else a run leaves there are counted) and in the checkout.
#
# Usage: benchmarks/suite_under_load.sh [-n RUNS] [--no-load] [-- COMMAND ARGS...]
#   -n RUNS     runs in a row (default 3)
#   --no-load   no CPU-bound processes (the same figures on a quiet machine)
#   COMMAND     what to run instead of `bash .ci/run`, e.g.
#               -- .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_signals.py
# Exit status: 0 when every run passed.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=3
load=2
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --no-load) load=0; shift ;;
        --) shift; break ;;
        *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
if [ $# -gt 0 ]; then cmd=("$@"); else cmd=(bash .ci/run); fi

base_tmp="${TMPDIR:-/tmp}"
export TMPDIR
TMPDIR="$(mktemp -d "$base_tmp/suite-under-load.XXXXXX")"
logs="$(mktemp -d "$base_tmp/suite-under-load-logs.XXXXXX")"
hogs=()
stop() {
    for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null; done
    wait "${hogs[@]}" 2>/dev/null
    rm -rf "$TMPDIR"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq "$load"); do
    python3 -c "while True: pass" &
    hogs+=($!)
done

checkout_kib() { du -sk --exclude=.git . | cut -f1; }
before_kib=$(checkout_kib)
echo "load: $load CPU-bound processes (${hogs[*]:-none}) on $(nproc) cores; TMPDIR=$TMPDIR; logs in $logs"
echo "command: ${cmd[*]}"
results=()
failed=0
for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    "${cmd[@]}" >"$logs/run-$i.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    seconds=$(python3 -c "print(f'{$end - $start:.0f}')")
    left=$(du -sh "$TMPDIR" | cut -f1)
    grown=$(( $(checkout_kib) - before_kib ))
    summary=$(grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)" "$logs/run-$i.log" | tail -1)
    line="run $i: exit $rc, ${seconds} s, temporary folder after: $left, checkout grew ${grown} KiB; ${summary:-no pytest summary}"
    echo "$line"
    results+=("$line")
    [ "$rc" -eq 0 ] || failed=1
done

echo "=== summary ($runs runs, load $load, $(date -u +%Y-%m-%dT%H:%MZ))"
printf '%s\n' "${results[@]}"
exit "$failed"
