#!/bin/bash
# The daemon's side of the systemd contract, without systemd as PID 1:
# socket activation through systemd-socket-activate, $NOTIFY_SOCKET through
# a listener of our own, and the sandbox.
#
#   test_sd.sh CASE REFPAGED DEMO HOLD_CLIENT NOTIFY_LISTEN
#
# CASE is one of:
#   activate   systemd-socket-activate --seqpacket passes the socket; clients
#              are served; SIGTERM ends it with status 0
#   notify     READY=1, STATUS=, WATCHDOG=1 every WATCHDOG_USEC/2, from the
#              daemon's pid; SIGTERM: STOPPING=1, exit 0, and a client holding
#              a mapping neither hangs nor loses its pages (untouched ones read
#              zeros)
#   sandbox    every thread has NoNewPrivs, a seccomp filter and no capability
#              but CAP_SYS_PTRACE; --debug-denied-syscall: uname(2) and a
#              read-only open(2) get ENOSYS (the open is allowed in a
#              sanitizer build only: RP_SANITIZER_BUILD=1); the demo passes
#   forbidden  --debug-forbidden-syscall after READY=1: killed by SIGSYS; with
#              --no-sandbox the same syscall goes through
# Exit 0: pass, 1: fail, 77: skipped (says why).
set -u

case_=$1 daemon=$2 demo=$3 hold=$4 listen=$5
dir=$(mktemp -d /tmp/rp-sd.XXXXXX)
sock=$dir/refpaged.sock notify=$dir/notify
pids=()

cleanup() {
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*"
	for f in "$dir"/*.log; do
		[ -f "$f" ] && { echo "--- $(basename "$f")"; cat "$f"; }
	done
	exit 1
}
skip() {
	echo "SKIP: $*"
	exit 77
}

[ "$(id -u)" = 0 ] || skip "needs root: the daemon needs CAP_SYS_PTRACE for fork events"

# Wait up to $2 seconds for a line matching the regex $3 in file $1.
wait_line() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		grep -qE "$3" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

wait_socket() {
	local i
	for ((i = 0; i < 100; i++)); do
		[ -S "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

start_listener() {
	"$listen" "$notify" 60 > "$dir/notify.log" &
	pids+=($!)
	wait_line "$dir/notify.log" 5 LISTENING= || fail "notify listener did not start"
}

# Exit status of pid $1, or fail after $2 seconds.
reap() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$1" 2>/dev/null && fail "pid $1 still running after $2 s"
	wait "$1"
}

run_demo() {
	"$demo" -s "$sock" -m 16 > "$dir/demo$1.log" 2>&1 || fail "demo $1 failed"
	grep -q "all checks passed" "$dir/demo$1.log" || fail "demo $1: checks failed"
}

test_activate() {
	systemd-socket-activate --seqpacket -l "$sock" --fdname=refpaged \
		"$daemon" --workers 2 2> "$dir/daemon.log" &
	local pid=$!
	pids+=($pid)
	wait_socket "$sock" || fail "systemd-socket-activate did not listen"
	# The first connection starts the daemon (exec'd in place), the
	# second finds it running.
	run_demo 1
	run_demo 2
	grep -q "listening on the socket systemd passed" "$dir/daemon.log" ||
		fail "the daemon did not take the passed socket"
	kill -TERM "$pid"
	reap "$pid" 10
	local rc=$?
	[ $rc = 0 ] || fail "exit status $rc after SIGTERM"
	# The socket belongs to the activator: the daemon must not remove it.
	[ -S "$sock" ] || fail "the daemon unlinked a socket it did not bind"
}

test_notify() {
	start_listener
	NOTIFY_SOCKET=$notify WATCHDOG_USEC=2000000 "$daemon" --socket "$sock" --workers 2 \
		2> "$dir/daemon.log" &
	local pid=$!
	pids+=($pid)
	wait_line "$dir/notify.log" 10 " READY=1$" || fail "no READY=1"
	grep -qE "^[0-9.]+ $pid READY=1$" "$dir/notify.log" ||
		fail "READY=1 not from the daemon's pid $pid"
	grep -q " STATUS=serving" "$dir/notify.log" || fail "no STATUS= with READY=1"

	# A client holding a mapping across the daemon's stop.
	coproc HOLD { "$hold" "$sock" 64 2>&1; }
	local line
	read -r -t 10 -u "${HOLD[0]}" line || fail "hold_client did not start"
	[ "$line" = held ] || fail "hold_client: $line"

	sleep 3.2
	local pings
	pings=$(grep -c " $pid WATCHDOG=1$" "$dir/notify.log")
	((pings >= 3)) || fail "$pings WATCHDOG=1 in 3 s with WATCHDOG_USEC=2000000"
	awk -v pid="$pid" '$2 == pid && $3 == "WATCHDOG=1" {
		if (last != "" && $1 - last > 1.5) { print "gap " $1 - last; bad = 1 }
		last = $1 } END { exit bad }' "$dir/notify.log" ||
		fail "watchdog pings more than WATCHDOG_USEC/2 + 0.5 s apart"
	grep -qE " STATUS=[0-9]+ clients" "$dir/notify.log" || fail "no periodic STATUS="

	kill -TERM "$pid"
	reap "$pid" 10
	local rc=$?
	[ $rc = 0 ] || fail "exit status $rc after SIGTERM"
	grep -qE "^[0-9.]+ $pid STOPPING=1$" "$dir/notify.log" || fail "no STOPPING=1"
	[ -e "$sock" ] && fail "socket file left behind"

	echo go >&"${HOLD[1]}"
	read -r -t 15 -u "${HOLD[0]}" line || fail "hold_client hung after the daemon stopped"
	echo "hold_client: $line"
	local hpid=$HOLD_PID
	wait "$hpid"
	rc=$?
	[ $rc = 0 ] || fail "hold_client exit status $rc: $line"
	[[ $line =~ "alive 0" ]] || fail "hold_client did not see the daemon go: $line"
	[[ $line =~ [1-9][0-9]*\ zero ]] || fail "no untouched page fell back to zeros: $line"
}

test_sandbox() {
	"$daemon" --socket "$sock" --workers 3 --debug-denied-syscall 2> "$dir/daemon.log" &
	local pid=$!
	pids+=($pid)
	wait_line "$dir/daemon.log" 10 "ready:" || fail "daemon not ready"
	# With CAP_SYS_PTRACE, a daemon that could open files read-only could
	# read /proc/PID/mem of every process (docs/security.md).
	local open_want="a read-only open\(2\) got ENOSYS"
	[ "${RP_SANITIZER_BUILD:-0}" = 1 ] && open_want="a read-only open\(2\) was allowed"
	wait_line "$dir/daemon.log" 10 "uname\(2\) got ENOSYS" || fail "uname(2) was not denied"
	wait_line "$dir/daemon.log" 10 "$open_want" || fail "open(2): want '$open_want'"
	local t n=0
	for t in /proc/$pid/task/*; do
		n=$((n + 1))
		grep -qE "^NoNewPrivs:\s+1$" "$t/status" || fail "$t: no NoNewPrivs"
		grep -qE "^Seccomp:\s+2$" "$t/status" || fail "$t: no seccomp filter"
		local c
		for c in CapPrm CapEff; do
			grep -qE "^$c:\s+0000000000080000$" "$t/status" ||
				fail "$t: $(grep "^$c:" "$t/status"), want cap_sys_ptrace only"
		done
		grep -qE "^CapInh:\s+00000000000(8|0)0000$" "$t/status" ||
			fail "$t: $(grep "^CapInh:" "$t/status"), want cap_sys_ptrace at most"
		grep -qE "^CapBnd:\s+0000000000080000$" "$t/status" ||
			fail "$t: bounding set $(grep "^CapBnd:" "$t/status")"
		grep -qE "^CapAmb:\s+0+$" "$t/status" || fail "$t: ambient capabilities left"
	done
	((n >= 4)) || fail "$n threads, expected the main one and 3 workers"
	run_demo 1
	kill -TERM "$pid"
	reap "$pid" 10
	local rc=$?
	[ $rc = 0 ] || fail "exit status $rc after SIGTERM"
}

test_forbidden() {
	start_listener
	NOTIFY_SOCKET=$notify "$daemon" --socket "$sock" --workers 2 --debug-forbidden-syscall \
		2> "$dir/daemon.log" &
	local pid=$!
	pids+=($pid)
	reap "$pid" 10
	local rc=$?
	grep -qE "^[0-9.]+ $pid READY=1$" "$dir/notify.log" ||
		fail "no READY=1 before the forbidden syscall"
	[ $rc = $((128 + 31)) ] || fail "exit status $rc, want death by SIGSYS (159)"

	# Control: without the filter the same syscall goes through
	# (execve of /bin/true, status 0).
	rm -f "$sock"
	"$daemon" --socket "$sock" --workers 2 --no-sandbox --debug-forbidden-syscall \
		2> "$dir/daemon-nosandbox.log" &
	pid=$!
	pids+=($pid)
	reap "$pid" 10
	rc=$?
	[ $rc = 0 ] || fail "--no-sandbox: exit status $rc, want 0 from /bin/true"
}

case $case_ in
activate)
	command -v systemd-socket-activate > /dev/null || skip "no systemd-socket-activate"
	test_activate
	;;
notify) test_notify ;;
sandbox) test_sandbox ;;
forbidden) test_forbidden ;;
*)
	echo "unknown case $case_"
	exit 2
	;;
esac
echo "PASS: $case_"
