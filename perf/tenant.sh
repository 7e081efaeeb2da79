#!/bin/bash
# Victims' latency under each multi-tenant attack (tests/tenant), in one
# run: for every attack, a private refpaged, a root victim and a uid-65533
# victim measuring MAP (rp_map round trip) and first-touch fault latency
# unloaded and while uid 65534 attacks; printed side by side as p50/p99.
# Correctness and budgets are the tests' business (ctest -L tenant); this
# only reports. As root.
#   perf/tenant.sh [BUILD_DIR] [rp_tenant options] [ATTACK...]
#   perf/tenant.sh build --full fork-storm churn     # the sizes
#   perf/tenant.sh build --markdown                  # the table of docs/security.md
# The whole report (each attack's daemon RSS, descriptors, log rate, what
# the attacker did) goes to a file named at the end.
set -uo pipefail
build=build
if [[ $# -gt 0 && -d $1 ]]; then build=$1; shift; fi
drv=$build/tests/tenant/rp_tenant
[[ -x $drv ]] || { echo "tenant.sh: build the tests first ($drv)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "tenant.sh: run as root (victims and attacker change uid)" >&2; exit 1; }
out=$(mktemp /tmp/rp-tenant-perf.XXXXXX)
"$drv" --table "$@" > "$out" 2>&1
rc=$?
# The table, the verdicts and the numbers behind them.
sed -n '/^Victim latency/,$p' "$out"
echo
grep -E '^(RESULT|LATENCY) ' "$out" | sed 's/^/  /'
echo "full report: $out"
# 1: some attack failed its assertions (reported above), not an error here.
[[ $rc == 0 || $rc == 1 || $rc == 77 ]]
