#!/bin/bash
# The main job: a private refpaged on a temporary socket, the demo client
# (256 MiB of 0xAA pattern memory), then the comparison benchmark.
# No systemd needed.   scripts/demo.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
tmp=$(mktemp -d /tmp/refpaged-demo.XXXXXX)
sock=$tmp/refpaged.sock
./build/daemon/refpaged --socket "$sock" 2>"$tmp/refpaged.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
echo "== refpaged (pid $daemon) on $sock"
./build/client/refpage-demo -s "$sock"
if [[ $(id -u) == 0 ]] && command -v setpriv >/dev/null; then
	# An ordinary user (no full userfaultfd with Debian's defaults): the
	# file backend, every system call included, no daemon involved.
	cp build/client/refpage-demo "$tmp/" && chmod 755 "$tmp" "$tmp/refpage-demo"
	echo
	echo "== the same as uid 65534"
	setpriv --reuid=65534 --regid=65534 --clear-groups "$tmp/refpage-demo" -s "$sock"
fi
echo
echo "== benchmark: refpaged against the kernel's own paths (ratios from this run)"
if [[ -x build/perf/refpage-bench ]]; then
	bench=(--socket "$sock" --mib 256 --reps 5 --threads 1
	       --workloads seq-write,seq-read,rand-write-10,many-small)
	[[ ${1:-} == --quick ]] && bench=(--socket "$sock" --mib 32 --reps 3 --threads 1)
	./build/perf/refpage-bench "${bench[@]}"
else
	echo "(refpage-bench not built)"
fi
echo
echo "== refpagectl stats"
./build/client/refpagectl --socket "$sock" stats
