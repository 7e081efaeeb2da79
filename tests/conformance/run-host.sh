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
# shellcheck source=../../scripts/private-daemon.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/private-daemon.sh"
private_daemon conformance "$daemon"
chmod 666 "$sock" 2>/dev/null || true

rc=0
echo "== as uid $(id -u)"
"$prog" --socket "$sock" "$@" || rc=$?
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
	# the binary must be reachable by uid 65534: copy it next to the socket
	cp "$sprog" "$tmp/conformance"
	chmod 755 "$tmp/conformance"
	echo "== as uid 65534"
	setpriv --reuid=65534 --regid=65534 --clear-groups \
		"$tmp/conformance" --socket "$sock" "$@" || rc=$?
fi
if [ $rc != 0 ]; then
	echo "conformance: FAILED (status $rc); daemon log:"
	tail -50 "$tmp/d.log"
fi
exit $rc
