# Sourced by test scripts: a private refpaged on a socket in a temporary
# directory, stopped (and the directory removed) when the script exits.
#   private_daemon TAG REFPAGED [refpaged args...]
# sets $tmp (the directory, mode 755), $sock and $pid; exits 1 with the
# daemon's log if it does not come up.

# shellcheck disable=SC2317 # called from the trap
private_daemon_cleanup() {
	if [ -n "${pid:-}" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}

private_daemon() {
	local tag=$1 daemon=$2
	shift 2
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/refpage-$tag.XXXXXX")
	chmod 755 "$tmp"
	sock=$tmp/d.sock
	pid=
	trap private_daemon_cleanup EXIT
	"$daemon" --socket "$sock" "$@" >"$tmp/d.log" 2>&1 &
	pid=$!
	for _ in $(seq 200); do
		[ -S "$sock" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if [ ! -S "$sock" ]; then
		echo "$tag: refpaged did not start:"
		cat "$tmp/d.log"
		exit 1
	fi
}
