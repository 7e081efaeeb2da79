#!/bin/bash
# How fast refpaged reclaims a fork storm: a client runs CHILDREN
# short-lived children, PARALLEL at a time (tests/integration/rp_fork_prog
# storm); then we time how long the daemon takes to come back to rest
# (no served process, descriptor count back to where it started).
#   perf/fork-storm.sh [BUILD_DIR] [CHILDREN] [PARALLEL]
set -euo pipefail
build=${1:-build} children=${2:-2000} par=${3:-8}
prog=$build/tests/integration/rp_fork_prog
ctl=$build/client/refpagectl
[[ -x $prog && -x $ctl ]] || { echo "fork-storm: build with tests first ($prog)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/rp-storm.XXXXXX)
chmod 755 "$tmp"
"$build/daemon/refpaged" --socket "$tmp/sock" 2>"$tmp/log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [[ -S $tmp/sock ]] && break; sleep 0.05; done
ms() { date +%s%3N; }
# The daemon-wide gauge: the first "processes" (the per-uid usage block
# after it has one of its own, an object).
served() { "$ctl" --socket "$tmp/sock" stats --json | grep -o '"processes": [0-9]*' | head -n 1 | cut -d' ' -f2; }
fds0=$(ls /proc/$daemon/fd | wc -l)
t0=$(ms)
"$prog" storm "$tmp/sock" "$children" "$par" >/dev/null
t1=$(ms)
while [[ $(served) != 0 || $(ls /proc/$daemon/fd | wc -l) -gt $((fds0 + 1)) ]]; do
	(($(ms) - t1 > 30000)) && { echo "fork-storm: not back to rest after 30 s" >&2; exit 1; }
	sleep 0.01
done
t2=$(ms)
"$ctl" --socket "$tmp/sock" stats --json | tr ',' '\n' | grep -E '"(ev_fork|processes_reclaimed|forks_untracked)"' | tr -d ' {}'
echo "storm: $children children, $par at a time, $((t1 - t0)) ms"
echo "reclaimed: back to rest $((t2 - t1)) ms after the storm ended (fds $fds0 -> $(ls /proc/$daemon/fd | wc -l))"
