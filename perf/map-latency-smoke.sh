#!/usr/bin/env bash
# perf/map-latency-smoke.sh REFPAGED MAP-LATENCY: map-latency --quick (two
# sizes, a few hundred pairs). Passes on exit status 0 and counts that add
# up: every cell there with all its pairs, no pair failed, the program's own
# sanity checks (ranges gauges, the fd store) passed. Never looks at timings.
set -euo pipefail

daemon=${1?usage: map-latency-smoke.sh REFPAGED MAP-LATENCY}
bench=${2?usage: map-latency-smoke.sh REFPAGED MAP-LATENCY}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/map-latency-smoke.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

rc=0
"$bench" --quick --daemon "$daemon" --pairs 400 --json "$tmp/m.json" --markdown "$tmp/m.md" \
	>"$tmp/out.txt" 2>&1 || rc=$?
cat "$tmp/out.txt"
fail=0
[ $rc = 0 ] || { echo "smoke: map-latency exited $rc"; fail=1; }
[ -s "$tmp/m.md" ] || { echo "smoke: no markdown report"; fail=1; }
if [ -s "$tmp/m.json" ]; then
	cells=$(grep -c '"daemon": "' "$tmp/m.json" || true)
	full=$(grep -c '"pairs": 400, "errors": 0,' "$tmp/m.json" || true)
	[ "$cells" = 4 ] || { echo "smoke: $cells cells, want 4"; fail=1; }
	[ "$full" = "$cells" ] || { echo "smoke: $full of $cells cells have 400 pairs and no error"; fail=1; }
	grep -q '"errors": 0,$' "$tmp/m.json" || { echo "smoke: errors reported"; fail=1; }
	grep -q '"sane": true' "$tmp/m.json" || { echo "smoke: sanity checks failed"; fail=1; }
	[ "$(grep -c '"journal": {' "$tmp/m.json")" = 2 ] || { echo "smoke: no journal figures"; fail=1; }
else
	echo "smoke: no JSON report"; fail=1
fi
if [ $fail = 0 ]; then echo "smoke: ok"; else echo "smoke: FAILED"; fi
exit $fail
