#!/usr/bin/env bash
# tests/conformance/run-host.sh REFPAGED CONFORMANCE CONFORMANCE-STATIC [conformance args...]
# A private refpaged on a temporary socket, then the conformance suite as
# root (CONFORMANCE) and as uid 65534 (CONFORMANCE-STATIC, copied next to the
# socket: no library path to find). Passes when no case FAILs.
set -euo pipefail

usage="usage: run-host.sh REFPAGED CONFORMANCE CONFORMANCE-STATIC [args]"
daemon=${1?$usage}
prog=${2?$usage}
sprog=${3?$usage}
shift 3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/refpage-conf.XXXXXX")
chmod 755 "$tmp"
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
	echo "conformance: refpaged did not start:"; cat "$tmp/d.log"; exit 1
fi
chmod 666 "$tmp/d.sock" 2>/dev/null || true

rc=0
echo "== as uid $(id -u)"
"$prog" --socket "$tmp/d.sock" "$@" || rc=$?
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
	# the binary must be reachable by uid 65534: copy it next to the socket
	cp "$sprog" "$tmp/conformance"
	chmod 755 "$tmp/conformance"
	echo "== as uid 65534"
	setpriv --reuid=65534 --regid=65534 --clear-groups \
		"$tmp/conformance" --socket "$tmp/d.sock" "$@" || rc=$?
fi
if [ $rc != 0 ]; then
	echo "conformance: FAILED (status $rc); daemon log:"
	tail -50 "$tmp/d.log"
fi
exit $rc
