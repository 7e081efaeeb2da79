#!/usr/bin/env bash
# perf/smoke.sh REFPAGED REFPAGE-BENCH: a private daemon, then every mode and
# workload at smoke size. Passes on exit status 0 with zero mismatches and
# the refpaged (uffd backend) and refpage-file (file backend) modes actually
# measured; never looks at timings.
set -euo pipefail

daemon=${1?usage: smoke.sh REFPAGED REFPAGE-BENCH}
bench=${2?usage: smoke.sh REFPAGED REFPAGE-BENCH}
# shellcheck source=../scripts/private-daemon.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/private-daemon.sh"
private_daemon smoke "$daemon"

rc=0
"$bench" --socket "$sock" --mib 8 --reps 1 --lat-reps 1 --threads 1 --small-count 100 \
	--json "$tmp/b.json" --latency-dir "$tmp/lat" >"$tmp/out.txt" 2>&1 || rc=$?
cat "$tmp/out.txt"
fail=0
[ $rc = 0 ] || { echo "smoke: refpage-bench exited $rc"; fail=1; }
if ! grep -q '"mismatches": 0' "$tmp/b.json" || grep -q '"mismatches": [1-9]' "$tmp/b.json"; then
	echo "smoke: mismatches reported"; fail=1
fi
for m in refpaged refpage-file; do
	if ! grep -q "\"mode\": \"$m\"" "$tmp/b.json"; then
		echo "smoke: the $m mode was not measured"; fail=1
	fi
done
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
