#!/usr/bin/env bash
# perf/smoke.sh REFPAGED REFPAGE-BENCH: a private daemon, then every mode and
# workload at smoke size. Passes on exit status 0 with zero mismatches and
# the refpaged mode actually measured; never looks at timings.
set -euo pipefail

daemon=${1?usage: smoke.sh REFPAGED REFPAGE-BENCH}
bench=${2?usage: smoke.sh REFPAGED REFPAGE-BENCH}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/refpage-smoke.XXXXXX")
pid=
# shellcheck disable=SC2317 # called from the trap
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

"$daemon" --socket "$tmp/d.sock" >"$tmp/d.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
	[ -S "$tmp/d.sock" ] && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.05
done
if [ ! -S "$tmp/d.sock" ]; then
	echo "smoke: refpaged did not start:"; cat "$tmp/d.log"; exit 1
fi

rc=0
"$bench" --socket "$tmp/d.sock" --mib 8 --reps 1 --lat-reps 1 --threads 1 --small-count 100 \
	--json "$tmp/b.json" --latency-dir "$tmp/lat" >"$tmp/out.txt" 2>&1 || rc=$?
cat "$tmp/out.txt"
fail=0
[ $rc = 0 ] || { echo "smoke: refpage-bench exited $rc"; fail=1; }
if ! grep -q '"mismatches": 0' "$tmp/b.json" || grep -q '"mismatches": [1-9]' "$tmp/b.json"; then
	echo "smoke: mismatches reported"; fail=1
fi
if ! grep -q '"mode": "refpaged"' "$tmp/b.json"; then
	echo "smoke: the refpaged mode was not measured"; fail=1
fi
if grep -q '"error": "' "$tmp/b.json"; then
	echo "smoke: some cells failed"; fail=1
fi
if [ $fail = 0 ]; then
	echo "smoke: ok"
else
	echo "smoke: FAILED; daemon log:"
	cat "$tmp/d.log"
fi
exit $fail
