#!/bin/bash
# Fail if systemd-analyze rates the service's exposure above MAX.
#
#   security_score.sh SERVICE MAX
set -u
service=$1 max=$2

command -v systemd-analyze > /dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }
out=$(systemd-analyze security --offline=yes --no-pager "$service" 2>&1)
rc=$?
# Only the settings that cost something, then the verdict.
grep -v "✓" <<< "$out"
# "→ Overall exposure level for refpaged.service: 0.9 SAFE 😀"
score=$(sed -nE 's/.*Overall exposure level for [^:]+: ([0-9]+(\.[0-9]+)?) .*/\1/p' <<< "$out")
if [ -z "$score" ]; then
	echo "FAIL: no exposure level in the output (status $rc)"
	exit 1
fi
if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
	echo "FAIL: exposure $score > $max"
	exit 1
fi
echo "PASS: exposure $score <= $max"
