# Sourced by test and perf scripts: a private refpaged on a socket in a
# temporary directory, stopped (and the directory removed) when the script
# exits; daemon_wait for scripts that start their own.
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
	daemon_wait "$sock" "$pid" "$tmp/d.log" "$tag: refpaged did not start:"
}

# daemon_wait SOCK PID LOG MESSAGE: wait up to 10 s for refpaged PID to
# bind SOCK; if it does not (or dies), print MESSAGE and LOG and exit 1.
daemon_wait() {
	for _ in $(seq 200); do
		[ -S "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || break
		sleep 0.05
	done
	[ -S "$1" ] && return 0
	echo "$4"
	cat "$3"
	exit 1
}
