#!/bin/sh
# campaign.sh - the fuzzing campaign of docs/reliability.md: runs each
# libFuzzer target of build-fuzz/ (`make fuzz`) for RUNS executions or
# SECS seconds, whichever comes first, on its checked-in corpus, then
# merges what it found into tests/fuzz/corpus/<target>/ (-merge=1 keeps
# only inputs that add coverage) and keeps at most CAP of the new files
# (the smallest) so the repository stays lean.  One line per target goes
# to stdout:
#   target execs secs exec/s cov ft corpus-files corpus-KiB crashes
# Usage: tests/fuzz/campaign.sh [target...]   (default: every fuzz_* target)
# Environment: RUNS (10000000), SECS (600), CAP (100),
# WORK (/tmp/lm-fuzz-campaign).
set -u
RUNS=${RUNS:-10000000}
SECS=${SECS:-600}
CAP=${CAP:-100}
WORK=${WORK:-/tmp/lm-fuzz-campaign}
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$top/build-fuzz
mkdir -p "$WORK"
targets=${*:-$(cd "$top/tests/fuzz" && ls fuzz_*.c | sed 's/\.c$//')}
for t in $targets; do
    corpus=$top/tests/fuzz/corpus/$t
    new=$WORK/$t.new
    rm -rf "$new" && mkdir -p "$new" "$WORK/$t.art"
    start=$(date +%s)
    nice -n 10 "$bin/$t" -runs="$RUNS" -max_total_time="$SECS" -print_final_stats=1 \
        -artifact_prefix="$WORK/$t.art/" "$new" "$corpus" >"$WORK/$t.log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$t.log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$WORK/$t.log" | tail -1)
    cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    nice -n 10 "$bin/$t" -merge=1 "$corpus" "$new" >"$WORK/$t.merge.log" 2>&1
    # New = not in git yet; the largest past CAP go.
    (cd "$top" && git ls-files --others --exclude-standard "tests/fuzz/corpus/$t" |
        while read -r f; do echo "$(stat -c %s "$f") $f"; done | sort -n |
        awk -v cap="$CAP" 'NR > cap {print $2}' | xargs -r rm -f)
    files=$(ls "$corpus" | wc -l)
    kib=$(du -sk "$corpus" | cut -f1)
    crashes=$(ls "$WORK/$t.art" | wc -l)
    echo "$t ${execs:-?} $secs $(( ${execs:-0} / (secs > 0 ? secs : 1) )) ${cov:-?} ${ft:-?} $files $kib $crashes rc=$rc"
done
