#!/bin/bash
# Runs inside the booted container, as rp-selftest.service, once
# multi-user.target is reached (see test_nspawn.sh). The package is
# installed (offline, before the boot); the clients are in /rp-test/bin;
# rpuser is an ordinary user. Writes "PASS: ..", "FAIL: ..", "SKIP: ..",
# "METRIC name value" and a final "DONE" to /out/result, logs to /out/.
set -u
export SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
out=/out/result
bin=/rp-test/bin
sock=/run/refpaged/refpaged.sock
svc=refpaged.service
failed=0

say() { echo "$*" >> "$out"; }
pass() { say "PASS: $*"; }
fail() {
	say "FAIL: $*"
	failed=1
}
check() { # check DESCRIPTION COMMAND...
	local what=$1
	shift
	if "$@" >> /out/checks.log 2>&1; then pass "$what"; else fail "$what"; fi
}
metric() { say "METRIC $1 $2"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
prop() { systemctl show -P "$2" "$1"; }
# wait_until SECONDS COMMAND...: poll every 20 ms.
wait_until() {
	local end=$(($(date +%s%N) + $1 * 1000000000))
	shift
	until "$@"; do
		(($(date +%s%N) > end)) && return 1
		sleep 0.02
	done
}
# An ordinary user: uid and gid of rpuser, its groups only, a clean
# environment; no capability, no access to /dev/userfaultfd.
as_user() { setpriv --reuid=rpuser --regid=rpuser --init-groups --reset-env -- "$@"; }
state_is() { [ "$(prop "$1" ActiveState)/$(prop "$1" SubState)" = "$2" ]; }
running_new() { state_is $svc active/running && [ "$(prop $svc MainPID)" != "$1" ]; }
exposure() {
	systemd-analyze security --no-pager "$1" 2>&1 |
		sed -nE 's/.*Overall exposure level for [^:]+: ([0-9]+(\.[0-9]+)?) .*/\1/p'
}
journal_has() { journalctl -u $svc --no-pager -o cat | grep -q "$1"; }
# A journal entry of the daemon whose MESSAGE matches $1 and has PRIORITY $2.
journal_prio() {
	journalctl -u $svc --no-pager -o json _COMM=refpaged |
		grep -E "\"MESSAGE\":\"[^\"]*$1" | grep -q "\"PRIORITY\":\"$2\""
}
purged() { # the checks after the packages are purged: $1 names the step
	check "$1: user and group refpaged are gone" \
		sh -c '! getent passwd refpaged && ! getent group refpaged'
	check "$1: /run/refpaged is gone" test ! -e /run/refpaged
	check "$1: no file named after refpage is left (units, links, mask, deb-systemd-helper's state)" sh -c \
		'f=$(find / -xdev -name "*refpage*" -not -path "/rp-test/*" -not -path "/out/*"); echo "$f"; [ -z "$f" ]'
	check "$1: systemd knows no refpaged unit" sh -c \
		'u=$(systemctl list-units --all --plain --no-legend "refpaged*"; systemctl list-unit-files --no-legend "refpaged*"); echo "$u"; [ -z "$u" ]'
	check "$1: dpkg has forgotten them" sh -c \
		'! dpkg -s refpaged librefpage0 librefpage-dev 2>/dev/null | grep -q "^Status:"'
}
removed() { # the checks after the daemon's package is removed or purged
	check "$1: no unit file shipped is left" sh -c \
		'f=$(find /lib/systemd /usr/lib/systemd /run/systemd/system -name "refpaged*"); echo "$f"; [ -z "$f" ]'
	check "$1: no refpaged unit is active" sh -c \
		'for u in refpaged.socket refpaged.service; do ! systemctl --quiet is-active $u || exit 1; done'
	check "$1: no socket file" test ! -e $sock
	check "$1: no daemon process" sh -c '! pgrep -a -x refpaged'
}
removed_only() { # after a removal that is not a purge: as debhelper leaves it
	check "$1: refpaged.socket masked by deb-systemd-helper until the package comes back" sh -c \
		'[ "$(readlink /etc/systemd/system/refpaged.socket)" = /dev/null ] && [ -e /var/lib/systemd/deb-systemd-helper-masked/refpaged.socket ]'
}

: > "$out"
t_boot=$(cat /out/t0)

# --- socket activation and the first fault ------------------------------
check "refpaged.socket is listening at boot" state_is refpaged.socket active/listening
check "$sock is a socket of mode 0666" sh -c "[ -S $sock ] && [ \$(stat -c %a $sock) = 666 ]"
check "refpaged.service is inactive before the first client" state_is $svc inactive/dead
as_user $bin/hold_client $sock 2 < /dev/null > /out/first.log 2>&1
rc=$?
t_first=$(now)
if [ $rc = 0 ]; then
	pass "the first client (an ordinary user) is served"
	metric boot_to_first_fault_s "$(elapsed "$t_boot" "$t_first")"
	# The same from the container's side: PID 1 (systemd) started.
	ts=$(systemctl show --timestamp=us+utc -P UserspaceTimestamp)
	metric pid1_to_first_fault_s "$(elapsed "$(date -d "${ts#* }" +%s.%N)" "$t_first")"
else
	fail "the first client (an ordinary user) is served: status $rc, $(cat /out/first.log)"
fi
check "the first connection started refpaged.service, active (running)" state_is $svc active/running
pid=$(prop $svc MainPID)
argv=$(systemctl show -p ExecStart $svc | sed -nE 's/.*argv\[\]=([^;]*[^ ;]) ;.*/\1/p')
metric restart_sec "$(prop $svc RestartUSec)"
start=$(prop $svc ExecMainStartTimestampMonotonic) ready=$(prop $svc ActiveEnterTimestampMonotonic)
metric service_start_to_ready_ms "$(awk -v a="$start" -v b="$ready" 'BEGIN { printf "%.1f", (b - a) / 1000 }')"
check "STATUS= arrived with READY=1 (serving, N workers)" sh -c \
	"systemctl show -P StatusText $svc | grep -qE '^serving, [0-9]+ workers|clients'"
check "the daemon runs as refpaged, not root" sh -c "[ \$(ps -o user= -p $pid) = refpaged ]"
check "the daemon holds CAP_SYS_PTRACE only" sh -c \
	"grep -qE '^CapEff:\s+0000000000080000$' /proc/$pid/status && grep -qE '^CapBnd:\s+0000000000080000$' /proc/$pid/status"
check "the daemon has a seccomp filter and no_new_privs" sh -c \
	"grep -qE '^Seccomp:\s+2$' /proc/$pid/status && grep -qE '^NoNewPrivs:\s+1$' /proc/$pid/status"

# --- an ordinary user's client: pattern, fork ---------------------------
check "rpuser is an ordinary user (not root, no group but its own)" sh -c \
	'[ "$(id -u rpuser)" != 0 ] && [ "$(id -Gn rpuser)" = rpuser ]'
as_user $bin/refpage-demo -m 16 > /out/demo.log 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "all checks passed" /out/demo.log; then
	pass "refpage-demo as rpuser: pattern, private writes, MADV_DONTNEED, munmap, mremap, fork"
else
	fail "refpage-demo as rpuser (status $rc), see demo.log"
fi
# Pages nobody touched before the forks: they read the pattern only if the
# daemon follows the forks and serves child and grandchild.
as_user $bin/fork_client > /out/fork.log 2>&1
rc=$?
if [ $rc = 0 ]; then
	pass "fork_client as rpuser: a child and a grandchild are served, writes stay private"
else
	fail "fork_client as rpuser (status $rc): $(grep -v '^ok' /out/fork.log | tr '\n' ' ')"
fi
if journal_has "uid $(id -u rpuser): client up.*(user-mode only)"; then
	say "NOTE: rpuser's clients got user-mode-only userfaultfds (vm.unprivileged_userfaultfd=0)"
fi

# --- refpage-run as installed: it finds its shim, refpages are had -------
# As root (a full userfaultfd); --strict exits 1 rather than fall back.
# dd read(2)s into its 1 MiB buffer: a kernel-mode fault on a refpage.
if command -v refpage-run > /dev/null; then
	check "refpage-run --strict dd: the shim is found and serves dd's buffers" \
		refpage-run --strict -- dd if=/dev/zero of=/dev/null bs=1M count=4 status=none
else
	say "SKIP: refpage-run is not in this package"
fi

# --- STATUS= and the journal --------------------------------------------
check "systemctl status shows the daemon's STATUS= counters" wait_until 5 sh -c \
	"systemctl status --no-pager $svc | grep -qE 'Status: \"[0-9]+ clients, [0-9]+ processes, [0-9]+ faults served \\(refpaged [0-9][^)]*\\)\"'"
systemctl status --no-pager $svc > /out/status.txt 2>&1
check "journal: 'ready' line at PRIORITY 5 (notice)" journal_prio "refpaged [^ ]+ ready:" 5
check "journal: 'listening on the socket systemd passed' at PRIORITY 6 (info)" \
	journal_prio "listening on the socket systemd passed" 6
check "journal: the <N> prefixes were taken as priorities, not kept in the text" sh -c \
	"! journalctl -u $svc -o cat _COMM=refpaged | grep -qE '^<[0-7]>'"

# --- READY=1: without it the service never becomes active ---------------
# Control: the same daemon without $NOTIFY_SOCKET cannot say READY=1; it
# serves, but the unit stays "activating (start)".
systemctl stop $svc
mkdir -p /run/systemd/system/$svc.d
printf '[Service]\nUnsetEnvironment=NOTIFY_SOCKET\n' > /run/systemd/system/$svc.d/test-notify.conf
systemctl daemon-reload
timeout 10 refpagectl stats > /dev/null 2>&1
rc=$?
sleep 3
check "without READY=1 the service stays activating (start)" state_is $svc activating/start
check "without READY=1 the daemon itself is up (it answered refpagectl)" test $rc = 0
systemctl stop $svc
rm -r /run/systemd/system/$svc.d
systemctl daemon-reload
refpagectl stats > /dev/null 2>&1
check "with READY=1 it is active (running) again" wait_until 5 state_is $svc active/running

# --- kill -9: restart; a held client neither hangs nor loses pages ------
coproc HOLD { as_user $bin/hold_client $sock 64 2>&1; }
# bash unsets HOLD and HOLD_PID once the coprocess is reaped: copy them.
hpid=$HOLD_PID
exec {hold_out}<&"${HOLD[0]}" {hold_in}>&"${HOLD[1]}"
read -r -t 10 -u $hold_out line
[ "${line:-}" = held ] || fail "hold_client did not start: ${line:-nothing}"
pid=$(prop $svc MainPID) n0=$(prop $svc NRestarts)
t_kill=$(now)
systemctl kill -s KILL $svc
if wait_until 20 running_new "$pid"; then
	metric restart_kill_to_active_s "$(elapsed "$t_kill" "$(now)")"
	pass "systemctl kill -s KILL: restarted (NRestarts $n0 -> $(prop $svc NRestarts))"
else
	fail "systemctl kill -s KILL: not restarted: $(prop $svc ActiveState)/$(prop $svc SubState)"
fi
echo go >&$hold_in
read -r -t 15 -u $hold_out line
wait "$hpid"
rc=$?
exec {hold_out}<&- {hold_in}>&-
# Its pages are intact, untouched ones read the pattern or (the daemon
# gone) zeros. With the unit's --fd-store, systemd kept its connection and
# userfaultfd for the restarted daemon: it is still served.
if [ $rc = 0 ]; then
	pass "a client holding a mapping across the kill did not hang: ${line}"
else
	fail "held client after the kill (status $rc): ${line:-nothing}"
fi
case " $argv " in
*" --fd-store "*)
	if [[ ${line:-} =~ " 0 zero, alive 1" ]]; then
		pass "--fd-store: the restarted daemon serves the held client on"
	else
		fail "--fd-store: the held client lost its service: ${line:-nothing}"
	fi
	;;
esac
check "new clients are served after the restart" sh -c \
	"setpriv --reuid=rpuser --regid=rpuser --init-groups --reset-env -- $bin/refpage-demo -m 4 | grep -q 'all checks passed'"
# Kill again and connect at once: the socket (held by systemd) queues the
# connection; the client waits for the restarted daemon, it is not refused.
pid=$(prop $svc MainPID)
t_kill=$(now)
systemctl kill -s KILL $svc
if as_user $bin/hold_client $sock 2 < /dev/null > /out/after-kill.log 2>&1; then
	metric restart_kill_to_client_served_s "$(elapsed "$t_kill" "$(now)")"
	pass "a client connecting right after a kill waits and is served"
else
	fail "a client connecting right after a kill: $(cat /out/after-kill.log)"
fi

# --- restarts a client never notices: kill -9 x10, restart, reload -------
# load_client, as rpuser: 16 threads and a fork child with 4 drop and
# re-touch their pages of four refpage mappings without a pause, checking
# every byte, while a monitor calls rp_alive() every millisecond. After
# each event every thread, in both processes, must finish a round: none is
# left hanging on a fault the dead daemon had read.
kills=10
coproc LOAD { as_user $bin/load_client $sock 16 2>&1; }
lpid=$LOAD_PID
exec {load_out}<&"${LOAD[0]}" {load_in}>&"${LOAD[1]}"
reply=
load_cmd() { # load_cmd COMMAND: the client's answer in $reply
	reply=
	echo "$1" >&$load_in
	read -r -t 90 -u $load_out reply
}
field() { # field NAME: NAME=value from $reply
	sed -nE "s/.* $1=([^ ]*).*/\1/p" <<< " $reply"
}
read -r -t 60 -u $load_out line
if [ "${line:-}" != flowing ]; then
	fail "load_client did not start: ${line:-nothing}"
else
	ups0=$(journalctl -u $svc -o cat --no-pager | grep -c "client up")
	restores0=$(journalctl -u $svc -o cat --no-pager | grep -c "restore: from systemd")
	n0=$(prop $svc NRestarts) worst_down=0 k=0 killed=0
	while [ $k -lt $kills ]; do
		k=$((k + 1))
		pid=$(prop $svc MainPID)
		t_kill=$(now)
		systemctl kill -s KILL $svc
		if ! wait_until 20 running_new "$pid"; then
			fail "kill $k of $kills under load: not restarted: $(prop $svc ActiveState)/$(prop $svc SubState)"
			break
		fi
		worst_down=$(awk -v a="$worst_down" -v b="$(elapsed "$t_kill" "$(now)")" 'BEGIN { print (b > a ? b : a) }')
		load_cmd check
		case $reply in
		ok*) killed=$k ;;
		*)
			fail "kill $k of $kills under load: ${reply:-no answer from load_client}"
			break
			;;
		esac
	done
	case $killed in
	$kills)
		pass "$kills x systemctl kill -s KILL under 16+4 faulting threads: every thread goes on, no wrong byte (NRestarts $n0 -> $(prop $svc NRestarts); $reply)"
		metric kill_worst_down_s "$worst_down"
		metric kill_worst_fault_ms "$(field max_ms)"
		;;
	esac
	pid=$(prop $svc MainPID)
	systemctl restart $svc
	if wait_until 20 running_new "$pid"; then
		load_cmd check
		if [[ $reply == ok* ]]; then
			pass "systemctl restart under load: the client is served on ($reply)"
		else
			fail "systemctl restart under load: ${reply:-no answer}"
		fi
	else
		fail "systemctl restart: not running again"
	fi
	# ExecReload= is refpagectl upgrade: refpaged re-execs itself in place
	# and hands MAINPID= to the new process (NotifyAccess=main).
	pid=$(prop $svc MainPID)
	t_reload=$(now)
	if systemctl reload $svc && wait_until 20 running_new "$pid"; then
		metric reload_s "$(elapsed "$t_reload" "$(now)")"
		metric reload_pause_ms "$(journalctl -u $svc -o cat --no-pager |
			sed -nE 's/.*serves now; clients waited at most ([0-9.]+) ms.*/\1/p' | tail -n 1)"
		load_cmd check
		npid=$(prop $svc MainPID)
		if [[ $reply == ok* ]] && [ "$(ps -o comm= -p "$npid")" = refpaged ]; then
			pass "systemctl reload under load: MainPID $pid -> $npid (refpaged), the client is served on ($reply)"
		else
			fail "systemctl reload under load: MainPID $npid ($(ps -o comm= -p "$npid")): ${reply:-no answer}"
		fi
		check "reload: no restart counted, no failure" sh -c \
			"[ \$(systemctl show -P Result $svc) = success ] && [ \$(systemctl show -P NRestarts $svc) = $(prop $svc NRestarts) ]"
	else
		fail "systemctl reload: MainPID stayed $pid, $(prop $svc ActiveState)/$(prop $svc SubState)"
	fi
	journalctl -u $svc --no-pager > /out/journal-restarts.txt 2>&1
	ups=$(journalctl -u $svc -o cat --no-pager | grep -c "client up")
	restores=$(journalctl -u $svc -o cat --no-pager | grep -c "restore: from systemd")
	check "the load's client never reconnected: no new 'client up' in the journal ($ups0 before, $ups after)" \
		test "$ups" = "$ups0"
	check "rp_alive() never said the connection was gone (dead=$(field dead))" \
		sh -c "case '$(field dead)' in 0/*) exit 0 ;; *) exit 1 ;; esac"
	check "each start restored the clients from the fd store ($((restores - restores0)) restores for $((kills + 1)) starts)" \
		test $((restores - restores0)) -ge $((kills + 1))
	check "nothing restored was dropped" sh -c "! journalctl -u $svc -o cat --no-pager | grep -q 'dropped;'"
	# systemd's SIGTERM reaches the exec helper too; its death must not
	# make the sandboxed daemon die of SIGSYS (libev reaps it).
	check "no daemon died of its seccomp filter (SIGSYS) on restart or reload" sh -c \
		"! journalctl -u $svc -o cat --no-pager | grep -q 'status=31/SYS'"
	# systemctl stop: systemd empties the fd store; the clients are let go.
	load_cmd lenient
	systemctl stop $svc
	check "systemctl stop: the service is inactive, the daemon exited cleanly" sh -c \
		"[ \$(systemctl show -P ActiveState $svc)/\$(systemctl show -P Result $svc) = inactive/success ]"
	check "systemctl stop: the log says the stop releases the clients" wait_until 5 journal_has \
		"stopping; [0-9]* clients ([0-9]* processes) stay in the fd store: a restart resumes them, a stop (systemctl stop) releases them"
	load_cmd check
	if [[ $reply == ok* ]] && [ "$(field zeros)" != 0 ] && [[ "$(field dead)" != 0/* ]]; then
		pass "systemctl stop releases the client: untouched pages read zeros, nothing hangs ($reply)"
	else
		fail "systemctl stop under load: want ok, zeros and a dead connection: ${reply:-no answer}"
	fi
fi
load_cmd stop
wait "$lpid" 2> /dev/null
rc=$?
exec {load_out}<&- {load_in}>&-
if [ $rc = 0 ] && [[ $reply == done* ]]; then
	pass "load_client ends cleanly: no thread stuck, no wrong byte ($reply)"
else
	fail "load_client (status $rc): ${reply:-no answer}"
fi

# --- watchdog -----------------------------------------------------------
# The shipped unit arms it; the override shortens it and stalls the main
# loop 5 s (2.5 periods) after READY=1: the pings must keep the daemon
# alive until then, and their absence must get it restarted.
check "the shipped unit arms the watchdog (WatchdogSec=10)" sh -c \
	"[ \$(systemctl show -P WatchdogUSec $svc) = 10s ]"
mkdir -p /etc/systemd/system/$svc.d
cat > /etc/systemd/system/$svc.d/override.conf << EOF
[Service]
ExecStart=
ExecStart=$argv --debug-stall-after 5
WatchdogSec=2
LimitCORE=0
EOF
systemctl daemon-reload
systemctl reset-failed $svc
n0=$(prop $svc NRestarts)
systemctl restart $svc
restarted() { [ "$(prop $svc NRestarts)" -gt "$n0" ] && journal_has "Watchdog timeout"; }
if wait_until 30 restarted; then
	pass "a stalled main loop: 'Watchdog timeout', restarted (NRestarts $n0 -> $(prop $svc NRestarts))"
else
	fail "no watchdog restart: NRestarts $(prop $svc NRestarts), $(prop $svc Result)"
fi
check "the watchdog pings kept it alive until the stall" sh -c \
	"journalctl -u $svc -o cat --no-pager | grep -m1 -E 'stalling the main loop|Watchdog timeout' | grep -q stalling"
check "journal: the stall's warning at PRIORITY 4 (warning)" journal_prio "stalling the main loop" 4
rm -r /etc/systemd/system/$svc.d
systemctl daemon-reload
systemctl reset-failed $svc
systemctl restart $svc
check "without the override, clients are served again" sh -c \
	"setpriv --reuid=rpuser --regid=rpuser --init-groups --reset-env -- $bin/refpage-demo -m 4 | grep -q 'all checks passed'"

# --- security score as the running systemd sees it ----------------------
score=$(exposure $svc)
systemd-analyze security --no-pager $svc > /out/security-online.txt 2>&1
if [ -n "$score" ]; then
	metric security_online "$score"
else
	fail "systemd-analyze security $svc: no score"
fi

journalctl -u $svc -u refpaged.socket --no-pager > /out/journal.txt 2>&1
systemd-analyze time > /out/analyze-time.txt 2>&1

# --- remove, purge, install on a running system, upgrade, purge ---------
# The three packages (refpaged, librefpage0, librefpage-dev) of this build
# are in /rp-test/v1, those of the same source rebuilt as a higher version
# in /rp-test/v2 (test_nspawn.sh).
v1=(/rp-test/v1/*.deb) v2=(/rp-test/v2/*.deb)
ver() { dpkg-query -W -f='${Version}' "$1" 2> /dev/null; }
want_v2=$(dpkg-deb -f /rp-test/v2/refpaged_*.deb Version)
apt-get remove -y refpaged > /out/apt-remove.log 2>&1 || fail "apt-get remove refpaged"
removed "apt-get remove"
removed_only "apt-get remove"
apt-get install -y "${v1[@]}" > /out/apt-install-after-remove.log 2>&1 || fail "apt-get install after remove"
check "install after remove: refpaged.socket unmasked, enabled and listening again" sh -c \
	"systemctl --quiet is-enabled refpaged.socket && [ \$(systemctl show -P SubState refpaged.socket) = listening ]"
apt-get purge -y refpaged librefpage0 librefpage-dev > /out/apt-purge.log 2>&1 || fail "apt-get purge"
removed "apt-get purge"
purged "apt-get purge"

apt-get install -y "${v1[@]}" > /out/apt-install.log 2>&1 || fail "apt-get install ${v1[*]}"
check "installed on a running systemd: refpaged.socket enabled" systemctl --quiet is-enabled refpaged.socket
check "installed on a running systemd: refpaged.socket listening, service not started" sh -c \
	"[ \$(systemctl show -P SubState refpaged.socket) = listening ] && [ \$(systemctl show -P ActiveState $svc) = inactive ]"
check "installed on a running systemd: an ordinary user is served" sh -c \
	"setpriv --reuid=rpuser --regid=rpuser --init-groups --reset-env -- $bin/refpage-demo -m 4 | grep -q 'all checks passed'"

# --- a package upgrade under load: the daemon replaced in place ----------
# load_client as before (16 threads and a forked child with 4, every byte
# checked); apt-get installs the higher version over it: postinst's
# systemctl reload hands the clients to the new binary. The slowest first
# touch is measured from just before apt-get to the check after it.
coproc LOAD { as_user $bin/load_client $sock 16 2>&1; }
lpid=$LOAD_PID
exec {load_out}<&"${LOAD[0]}" {load_in}>&"${LOAD[1]}"
read -r -t 60 -u $load_out line
if [ "${line:-}" != flowing ]; then
	fail "upgrade: load_client did not start: ${line:-nothing}"
else
	pid=$(prop $svc MainPID) n0=$(prop $svc NRestarts) v0=$(ver refpaged)
	ups0=$(journalctl -u $svc -o cat --no-pager | grep -c "client up")
	# Control: the slowest first touch of this load in 10 s without an
	# upgrade (2 CPUs, 20 faulting threads: the scheduler's share).
	load_cmd mark
	sleep 10
	load_cmd check
	metric upgrade_control_fault_ms "$(field max_ms)"
	# The slowest first touch from here on is the upgrade's.
	load_cmd mark
	t_up=$(now)
	apt-get install -y "${v2[@]}" > /out/apt-upgrade.log 2>&1 || fail "apt-get install ${v2[*]} (upgrade)"
	metric upgrade_s "$(elapsed "$t_up" "$(now)")"
	load_cmd check
	metric upgrade_worst_fault_ms "$(field max_ms)"
	metric upgrade_pause_ms "$(journalctl -u $svc -o cat --no-pager |
		sed -nE 's/.*serves now; clients waited at most ([0-9.]+) ms.*/\1/p' | tail -n 1)"
	npid=$(prop $svc MainPID)
	if [[ $reply == ok* ]] && [ "$(field bad)" = 0 ] && [ "$(field zeros)" = 0 ]; then
		pass "package upgrade $v0 -> $(ver refpaged) under 16+4 faulting threads: every thread goes on, no wrong byte, no zero page ($reply)"
	else
		fail "package upgrade under load: ${reply:-no answer from load_client}"
	fi
	check "upgrade: all three packages are at $want_v2" sh -c \
		"[ '$(ver refpaged)/$(ver librefpage0)/$(ver librefpage-dev)' = '$want_v2/$want_v2/$want_v2' ]"
	check "upgrade: the daemon was replaced in place (MainPID $pid -> $npid, refpaged), not restarted (NRestarts $n0)" sh -c \
		"[ '$npid' != '$pid' ] && [ \"\$(ps -o comm= -p $npid)\" = refpaged ] && [ \$(systemctl show -P NRestarts $svc) = $n0 ] && [ \$(systemctl show -P Result $svc) = success ]"
	check "upgrade: the new daemon runs the new binary (/proc/$npid/exe not deleted)" sh -c \
		"[ \"\$(readlink /proc/$npid/exe)\" = /usr/sbin/refpaged ]"
	check "upgrade: systemctl status shows the new version ($want_v2)" wait_until 5 sh -c \
		"systemctl status --no-pager $svc | grep -qF '(refpaged $want_v2)'"
	ups=$(journalctl -u $svc -o cat --no-pager | grep -c "client up")
	check "upgrade: the load's client never reconnected ($ups0 'client up' before, $ups after)" test "$ups" = "$ups0"
	check "upgrade: rp_alive() never said the connection was gone (dead=$(field dead))" sh -c \
		"case '$(field dead)' in 0/*) exit 0 ;; *) exit 1 ;; esac"
	systemctl status --no-pager $svc > /out/status-upgraded.txt 2>&1
fi
load_cmd stop
wait "$lpid" 2> /dev/null
rc=$?
exec {load_out}<&- {load_in}>&-
if [ $rc = 0 ] && [[ $reply == done* ]]; then
	pass "upgrade: load_client ends cleanly: no thread stuck, no wrong byte ($reply)"
else
	fail "upgrade: load_client (status $rc): ${reply:-no answer}"
fi

# A new version that cannot read the running daemon's state (here: a
# daemon that writes a format no binary reads): the old daemon goes on
# serving, postinst says so, and the packages are configured all the same.
mkdir -p /run/systemd/system/$svc.d
printf '[Service]\nExecStart=\nExecStart=/usr/sbin/refpaged --fd-store --debug-snapshot-version 999\n' \
	> /run/systemd/system/$svc.d/refuse.conf
systemctl daemon-reload
# Stopped first: a daemon restored from the fd store keeps the journal
# (and its format) it finds there.
systemctl stop $svc
systemctl start $svc
wait_until 20 state_is $svc active/running
pid=$(prop $svc MainPID)
apt-get install -y --reinstall "${v2[@]}" > /out/apt-refused.log 2>&1 || fail "apt-get install --reinstall (refused handover)"
check "refused handover: the old daemon goes on serving (MainPID $pid)" sh -c \
	"[ \$(systemctl show -P MainPID $svc) = $pid ] && systemctl --quiet is-active $svc"
check "refused handover: postinst tells the admin" grep -q "did not hand over to the new version" /out/apt-refused.log
configured() {
	[ "$(dpkg-query -W -f='${Status}\n' refpaged librefpage0 librefpage-dev | sort -u)" = "install ok installed" ]
}
check "refused handover: the packages are configured all the same" configured
check "refused handover: the journal says why" journal_has "the journal is format version 999"
journalctl -u $svc --no-pager -n 60 > /out/journal-refused.txt 2>&1
rm -rf /run/systemd/system/$svc.d
systemctl daemon-reload
systemctl stop $svc
systemctl start $svc

# A reinstall keeps the admin's choice and replaces a running daemon in
# place too.
wait_until 20 state_is $svc active/running
pid=$(prop $svc MainPID)
systemctl --quiet disable refpaged.socket
apt-get install -y --reinstall "${v2[@]}" > /out/apt-reinstall.log 2>&1 || fail "apt-get install --reinstall"
check "reinstall: the admin's 'disable' of refpaged.socket is kept" sh -c \
	'[ "$(systemctl is-enabled refpaged.socket)" = disabled ]'
check "reinstall: the running daemon was replaced in place" running_new "$pid"
apt-get purge -y refpaged librefpage0 librefpage-dev > /out/apt-purge2.log 2>&1 || fail "apt-get purge (second)"
removed "purge of a running daemon"
purged "purge of a running daemon"

say DONE
exit $failed
