#!/usr/bin/env bash
# tests/preload/preload-test.sh CASE: refpage-run and librefpage-preload.so
# against a private refpaged, under real programs. CTest passes the paths:
#   RP_DAEMON RP_RUN RP_SHIM RP_UNINIT RP_FORKALLOC RP_WORKLOAD RP_REPORT_CASES
#   RP_DIRECT_READ RP_MANYBLOCKS
# Cases: cli uninit programs-root programs-nobody nobody-kernel-access fork
#        fallback report report-programs many-blocks jemalloc
# Exit status 0: passed, 1: failed (what and why printed), 77: skipped (why).
set -uo pipefail

case_name=${1:?usage: preload-test.sh CASE}
for v in RP_DAEMON RP_RUN RP_SHIM RP_UNINIT RP_FORKALLOC RP_WORKLOAD RP_REPORT_CASES RP_DIRECT_READ; do
	[ -n "${!v:-}" ] || { echo "preload-test: \$$v is not set"; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/refpage-preload.XXXXXX")
chmod 755 "$tmp" # uid 65534 reaches the socket and the inputs
dpid=
failures=0
# shellcheck disable=SC2317 # called from the trap
cleanup() {
	stop_daemon
	if [ -n "${RP_TEST_KEEP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
	[ -z "${direct_dir:-}" ] || rm -rf "$direct_dir"

}
trap cleanup EXIT

skip() { echo "SKIP: $*"; exit 77; }
pass() { echo "ok   $*"; }
fail() {
	echo "FAIL $*"
	failures=$((failures + 1))
}

start_daemon() {
	"$RP_DAEMON" --socket "$tmp/d.sock" >"$tmp/d.log" 2>&1 &
	dpid=$!
	for _ in $(seq 200); do
		[ -S "$tmp/d.sock" ] && return 0
		kill -0 "$dpid" 2>/dev/null || break
		sleep 0.05
	done
	echo "refpaged did not start:"; cat "$tmp/d.log"; exit 1
}

stop_daemon() {
	if [ -n "$dpid" ]; then
		kill "$dpid" 2>/dev/null
		wait "$dpid" 2>/dev/null
		dpid=
	fi
}

nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
need_nobody() {
	[ "$(id -u)" = 0 ] || skip "not root: cannot run programs as uid 65534"
	command -v setpriv >/dev/null || skip "setpriv(1) not found"
}

# [USER] (root or nobody; default nobody): "uffd" where that user can make
# a full userfaultfd (root; uid 65534 with the sysctl at 1, or
# /dev/userfaultfd open to it), else "file": the backend --report (and
# librefpage's auto) gives it; refpage-run's default is the file backend.
nobody_backend() {
	if [ "${1:-nobody}" = root ] || [ "$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null)" = 1 ] ||
		"${nobody[@]}" sh -c 'exec 3<>/dev/userfaultfd' 2>/dev/null; then
		echo uffd
	else
		echo file
	fi
}

# Refpages usable here at all (a userfaultfd, the daemon answering)?
need_refpages() {
	"$RP_RUN" --strict --socket "$tmp/d.sock" -- true 2>"$tmp/probe.err" ||
		skip "refpages unusable here: $(cat "$tmp/probe.err")"
}

# run NAME [as nobody] -- CMD...: stdout to $tmp/NAME.out, stderr to
# $tmp/NAME.err, exit status in $rc.
run() {
	local name=$1 pre=()
	shift
	[ "$1" = nobody ] && pre=("${nobody[@]}")
	shift 2 # the user and "--"
	"${pre[@]}" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" </dev/null
	rc=$?
}

rp() { echo "$RP_RUN" --socket "$tmp/d.sock"; }

expect_out() { # NAME TEXT
	if [ "$rc" = 0 ] && [ "$(cat "$tmp/$1.out")" = "$2" ]; then
		pass "$1: $2"
	else
		fail "$1: wanted '$2' and status 0, got '$(cat "$tmp/$1.out")' status $rc; stderr:"
		cat "$tmp/$1.err"
	fi
}

# count_err NAME REGEX WANT: the number of stderr lines matching REGEX.
count_err() {
	local n
	n=$(grep -cE -- "$2" "$tmp/$1.err")
	if [ "$n" = "$3" ]; then
		pass "$1: $3 line(s) matching '$2' on stderr"
	else
		fail "$1: $n lines matching '$2' on stderr, wanted $3:"
		cat "$tmp/$1.err"
	fi
}

# --- cases ----------------------------------------------------------------

case_cli() {
	local args
	while IFS='|' read -r args want; do
		# shellcheck disable=SC2086 # word splitting wanted
		"$RP_RUN" $args >"$tmp/cli.out" 2>"$tmp/cli.err"
		rc=$?
		if [ "$rc" = 2 ] && grep -qF -- "$want" "$tmp/cli.err"; then
			pass "refpage-run $args: status 2, '$want'"
		else
			fail "refpage-run $args: status $rc, stderr:"; cat "$tmp/cli.err"
		fi
	done <<-'EOF'
		|no PROGRAM given
		--mode|needs a value
		--mode bogus -- true|--mode: want refpage, memset or anon
		--pattern 256 -- true|--pattern: want a byte value
		--pattern 0xZZ -- true|--pattern: want a byte value
		--pattern -1 -- true|--pattern: want a byte value
		--threshold 0 -- true|--threshold: want a size
		--threshold 12q -- true|--threshold: want a size
		--threshold 2048g -- true|--threshold: want a size
		--bogus -- true|unknown option '--bogus'
		--report --mode memset -- true|--report needs --mode refpage
		--report= -- true|--report=: want a file name
		--report-format xml -- true|--report-format: want text or json
		--backend bogus -- true|--backend: want auto, uffd or file
		--backend|needs a value
		--allow-user-mode-only --backend file -- true|--allow-user-mode-only asks for the uffd backend
	EOF
	"$RP_RUN" --mode anon -- "$tmp/no-such-program" 2>"$tmp/cli.err"
	rc=$?
	if [ "$rc" = 127 ] && grep -q "cannot run" "$tmp/cli.err"; then
		pass "missing program: status 127"
	else
		fail "missing program: status $rc"
	fi
	"$RP_RUN" --help | grep -q -- "--threshold BYTES" && pass "--help" || fail "--help"
	# The shim checks its environment itself: each bad value said once,
	# defaults used (mode memset asked for, the pattern falls back to 0xaa).
	run env-bad root -- env LD_PRELOAD="$RP_SHIM" REFPAGE_RUN_MODE=memset REFPAGE_RUN_PATTERN=0x1ff \
		REFPAGE_RUN_THRESHOLD=abc REFPAGE_RUN_STRICT=yes "$RP_UNINIT"
	expect_out env-bad "uninit: aa aa aa aa"
	count_err env-bad "ignoring bad REFPAGE_RUN_PATTERN" 1
	count_err env-bad "ignoring bad REFPAGE_RUN_THRESHOLD" 1
	count_err env-bad "ignoring bad REFPAGE_RUN_STRICT" 1
	run env-mode root -- env LD_PRELOAD="$RP_SHIM" REFPAGE_RUN_MODE=fast REFPAGED_SOCKET="$tmp/none" \
		"$RP_UNINIT"
	expect_out env-mode "uninit: aa aa aa aa"
	count_err env-mode "ignoring bad REFPAGE_RUN_MODE" 1
	count_err env-mode "cannot reach refpaged" 0 # the default backend (file) needs none
}

case_uninit() {
	start_daemon
	need_refpages
	run plain root -- "$RP_UNINIT"
	expect_out plain "uninit: 00 00 00 00"
	for m in refpage memset anon; do
		want="uninit: aa aa aa aa"
		[ $m = anon ] && want="uninit: 00 00 00 00"
		run "uninit-$m" root -- $(rp) --stats --mode $m -- "$RP_UNINIT"
		expect_out "uninit-$m" "$want"
		count_err "uninit-$m" "large blocks.* $m [1-9]" 1
	done
	run pattern root -- $(rp) --pattern 0x5c -- "$RP_UNINIT"
	expect_out pattern "uninit: 5c 5c 5c 5c"
	run threshold root -- $(rp) --stats --threshold 64m -- "$RP_UNINIT"
	count_err threshold "large blocks refpage 0, memset 0, anon 0;" 1

	need_nobody
	run nobody-memset nobody -- $(rp) --mode memset -- "$RP_UNINIT"
	expect_out nobody-memset "uninit: aa aa aa aa"
	# uid 65534 gets refpages, with no message: from the file backend,
	# refpage-run's default for every user; --strict holds.
	run nobody-refpage nobody -- $(rp) --strict --stats -- "$RP_UNINIT"
	expect_out nobody-refpage "uninit: aa aa aa aa"
	count_err nobody-refpage "mode refpage \\(backend file\\).* large blocks refpage [1-9][0-9]*, memset 0, anon [0-9]+; fallbacks 0" 1
	count_err nobody-refpage "user-mode-only|memset of|cannot" 0
	# Mixed: root's refpage-run exec'ing a program as uid 65534 (through
	# setpriv, itself shimmed as root): the file backend there too.
	cp "$RP_UNINIT" "$tmp/uninit" && chmod 755 "$tmp" "$tmp/uninit"
	run mixed-exec root -- $(rp) --strict --stats -- "${nobody[@]}" "$tmp/uninit"
	expect_out mixed-exec "uninit: aa aa aa aa"
	count_err mixed-exec "\\(backend file\\).* large blocks refpage [1-9]" 1
	# A set-user-ID program: ld.so ignores LD_PRELOAD in secure mode, so
	# the shim cannot reach it (documented): its memory is plain, zeros.
	if findmnt -no OPTIONS -T "$tmp" | grep -qw nosuid; then
		echo "note: $tmp is mounted nosuid: the set-user-ID check is not run"
	else
		cp "$RP_UNINIT" "$tmp/uninit-suid" && chmod 4755 "$tmp/uninit-suid"
		run suid nobody -- $(rp) --stats -- "$tmp/uninit-suid"
		expect_out suid "uninit: 00 00 00 00"
		count_err suid "large blocks" 0
	fi
	run nobody-file root -- $(rp) --backend file --stats -- "$RP_UNINIT"
	expect_out nobody-file "uninit: aa aa aa aa"
	count_err nobody-file "\\(backend file\\).* large blocks refpage [1-9]" 1
	run nobody-umo nobody -- $(rp) --stats --allow-user-mode-only -- "$RP_UNINIT"
	expect_out nobody-umo "uninit: aa aa aa aa"
	count_err nobody-umo "large blocks refpage [1-9]" 1
}

make_inputs() {
	seq 1 1000000 >"$tmp/seq.txt"
	awk 'BEGIN { x = 7; for (i = 0; i < 300000; i++) { x = (x * 1103515245 + 12345) % 2147483648; print x, i } }' \
		>"$tmp/shuf.txt"
	chmod 644 "$tmp"/*.txt
}

# The programs, byte-identical output under every mode to a plain run.
programs() {
	local user=$1 p m
	local -A cmd=(
		[xz]="/usr/bin/xz -T2 --block-size=1MiB -6 -c $tmp/seq.txt"
		[unxz]="/usr/bin/xz -T2 -dc $tmp/seq.txt.xz"
		[sort]="/usr/bin/sort --parallel=2 -S 32M -k1,1n $tmp/shuf.txt"
		[python3]="/usr/bin/python3 $RP_WORKLOAD 300000"
	)
	for b in /usr/bin/xz /usr/bin/sort /usr/bin/python3; do
		[ -x $b ] || skip "$b not installed (scripts/deps.sh installs it)"
	done
	make_inputs
	/usr/bin/xz -T2 --block-size=1MiB -6 -c "$tmp/seq.txt" >"$tmp/seq.txt.xz"
	chmod 644 "$tmp/seq.txt.xz"
	# Modes: refpage (refpage-run's default backend: file), uffd (refpage
	# mode on the uffd backend: refpaged serves; only where this user can
	# make a full userfaultfd), memset, anon.
	local modes=(refpage memset anon)
	[ "$(nobody_backend "$user")" = uffd ] && modes=(refpage uffd memset anon)
	for p in xz unxz sort python3; do
		# shellcheck disable=SC2086 # the commands are word lists
		run "$p-$user-plain" "$user" -- ${cmd[$p]}
		[ "$rc" = 0 ] || { fail "$p as $user without the shim: status $rc"; cat "$tmp/$p-$user-plain.err"; continue; }
		for m in "${modes[@]}"; do
			local n="$p-$user-$m" args=(--mode "$m") mode=$m be=file
			[ "$m" = uffd ] && args=(--mode refpage --backend uffd) mode=refpage be=uffd
			# shellcheck disable=SC2086
			run "$n" "$user" -- $(rp) --stats "${args[@]}" -- ${cmd[$p]}
			if [ "$rc" = 0 ] && cmp -s "$tmp/$p-$user-plain.out" "$tmp/$n.out"; then
				pass "$p as $user, ${args[*]}: output identical ($(wc -c <"$tmp/$n.out") bytes)"
			else
				fail "$p as $user, ${args[*]}: status $rc, output $(cmp "$tmp/$p-$user-plain.out" "$tmp/$n.out" 2>&1 | head -1)"
				cat "$tmp/$n.err"
			fi
			# Not passing vacuously: the blocks really came from that mode
			# (refpage mode: from that backend, never memset).
			[ $p = unxz ] && continue # its buffers are small
			grep -qE "large blocks.* $mode [1-9]" "$tmp/$n.err" ||
				{ fail "$p as $user, ${args[*]}: no large $mode blocks:"; cat "$tmp/$n.err"; }
			if [ $mode = refpage ]; then
				grep -qE "\(backend $be\).* fallbacks 0," "$tmp/$n.err" ||
					{ fail "$p as $user, ${args[*]}: not all from the $be backend:"; cat "$tmp/$n.err"; }
			fi
		done
	done
}

case_programs-root() {
	start_daemon
	need_refpages
	programs root
}

case_programs-nobody() {
	need_nobody
	start_daemon
	need_refpages
	programs nobody
}

# check_report NAME [BACKEND]: $tmp/NAME.json (the JSON lines of --report)
# against the "want" lines the case printed on $tmp/NAME.out: for each,
# exactly one report line of that pid with those values; no other line.
# The thread: the main thread's on the uffd backend (the default), null on
# the file backend.
check_report() {
	local name=$1 backend=${2:-uffd} why
	touch "$tmp/$name.json"
	if why=$(python3 - "$tmp/$name.out" "$tmp/$name.json" "$backend" <<-'PY'
		import json, sys
		want = [dict(kv.split("=", 1) for kv in l.split()[1:])
		        for l in open(sys.argv[1]) if l.startswith("want ")]
		backend = sys.argv[3]
		got = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
		fields = {"pid", "tid", "size", "allocator", "site", "function", "pages",
		          "first_offset", "backtrace"}
		for g in got:
		    if set(g) != fields:
		        sys.exit(f"fields {sorted(g)}, wanted {sorted(fields)}")
		if len(got) != len(want):
		    sys.exit(f"{len(got)} report lines, wanted {len(want)}: {got}")
		for w in want:
		    mine = [g for g in got if str(g["pid"]) == w["pid"]]
		    if len(mine) != 1:
		        sys.exit(f"pid {w['pid']}: {len(mine)} report lines: {got}")
		    g = mine[0]
		    if not (g["function"] or "").startswith(w["function"] + "+"):
		        sys.exit(f"site {g['site']} ({g['function']}), wanted {w['function']}")
		    for k in ("size", "pages", "first_offset"):
		        if str(g[k]) != w[k]:
		            sys.exit(f"{k} {g[k]}, wanted {w[k]}: {g}")
		    if backend == "file" and g["tid"] is not None:
		        sys.exit(f"thread {g['tid']}, wanted null (file backend)")
		    if backend != "file" and str(g["tid"]) != w["pid"]:
		        sys.exit(f"thread {g['tid']}, wanted the main thread {w['pid']}")
		print(f"{len(got)} report lines as wanted")
		PY
	); then
		pass "$name: $why"
	else
		fail "$name: $why"
		cat "$tmp/$name.err"
	fi
}

# The cases of report_cases.c: middle fails on the file backend if the
# kernel's fault-around maps neighbours of the page read; readwrite wants
# its page read and then written reported on the uffd backend only.
report_cases=(fresh realloc fork write clean middle readwrite nohandlers huge)

case_report() {
	start_daemon
	need_refpages
	local c be args
	# Root: the file backend (the default), and the uffd backend.
	for be in uffd file; do
		args=()
		[ $be = uffd ] && args=(--backend uffd)
		for c in "${report_cases[@]}"; do
			run "report-$be-$c" root -- $(rp) "${args[@]}" --report="$tmp/report-$be-$c.json" \
				--report-format json -- "$RP_REPORT_CASES" $c $be
			[ "$rc" = 0 ] || fail "report-$be-$c: status $rc"
			check_report "report-$be-$c" $be
		done
	done
	# Text, to stderr: one summary per process.
	run report-text root -- $(rp) --backend uffd --report -- "$RP_REPORT_CASES" fresh
	count_err report-text "report: 1 of 1 large allocations had pages read" 1
	count_err report-text "1048576 bytes from malloc at .*\(case_fresh_alloc\+0x[0-9a-f]*\): 1 page read before written, first at offset 20480" 1
	run report-text-write root -- $(rp) --backend uffd --report -- "$RP_REPORT_CASES" write
	count_err report-text-write "1048576 bytes from malloc at .*\(case_write_alloc\+0x[0-9a-f]*\): 3 pages read before written, first at offset 12288 by thread [0-9]+$" 1
	run report-text-fork root -- $(rp) --backend uffd --report -- "$RP_REPORT_CASES" fork
	count_err report-text-fork "report: [01] of 1 large" 2 # the parent's, the child's
	run report-text-file root -- $(rp) --report -- "$RP_REPORT_CASES" write
	count_err report-text-file "1048576 bytes from malloc at .*\(case_write_alloc\+0x[0-9a-f]*\): 3 pages read before written, first at offset 12288, thread unknown \(file backend\)$" 1
	count_err report-text-file "unavailable|nothing will be reported" 0
	run report-text-file-fork root -- $(rp) --report -- "$RP_REPORT_CASES" fork
	count_err report-text-file-fork "report: [01] of 1 large" 2

	need_nobody
	# uid 65534 only gets a user-mode-only uffd here: reads in user mode
	# are reported all the same (a read by the kernel would fail, EFAULT).
	mkdir -m 1777 "$tmp/w"
	run report-nobody-umo nobody -- $(rp) --allow-user-mode-only \
		--report="$tmp/w/report-nobody-umo.json" --report-format json -- "$RP_REPORT_CASES" fresh
	cp "$tmp/w/report-nobody-umo.json" "$tmp/" 2>/dev/null
	check_report report-nobody-umo
	# Plain --report: the file backend, for uid 65534 too, with no message.
	for c in "${report_cases[@]}"; do
		run "report-nobody-$c" nobody -- $(rp) --report="$tmp/w/report-nobody-$c.json" \
			--report-format json -- "$RP_REPORT_CASES" $c file
		[ "$rc" = 0 ] || fail "report-nobody-$c: status $rc"
		cp "$tmp/w/report-nobody-$c.json" "$tmp/" 2>/dev/null
		check_report "report-nobody-$c" file
	done
	count_err report-nobody-fresh "refpage-run|unavailable" 0
}

# Programs that initialise what they read report nothing, on either
# backend.
case_report-programs() {
	start_daemon
	need_refpages
	local p
	local -A cmd=(
		[xz]="/usr/bin/xz -T2 --block-size=1MiB -6 -c $tmp/seq.txt"
		[sort]="/usr/bin/sort --parallel=2 -S 32M -k1,1n $tmp/shuf.txt"
		[python3]="/usr/bin/python3 $RP_WORKLOAD 300000"
	)
	for b in /usr/bin/xz /usr/bin/sort /usr/bin/python3; do
		[ -x $b ] || skip "$b not installed (scripts/deps.sh installs it)"
	done
	make_inputs
	local be n
	for p in xz sort python3; do
		# shellcheck disable=SC2086 # the commands are word lists
		run "$p-plain" root -- ${cmd[$p]}
		for be in uffd file; do
			n=$p-$be
			# shellcheck disable=SC2086
			run "$n-report" root -- $(rp) --backend $be --stats --report="$tmp/$n.json" \
				--report-format json -- ${cmd[$p]}
			if [ "$rc" = 0 ] && cmp -s "$tmp/$p-plain.out" "$tmp/$n-report.out"; then
				pass "$p --backend $be --report: output identical"
			else
				fail "$p --backend $be --report: status $rc"; cat "$tmp/$n-report.err"
			fi
			grep -qE "\(backend $be\).* large blocks refpage [1-9]" "$tmp/$n-report.err" ||
				{ fail "$p --backend $be --report: no refpage blocks watched"; cat "$tmp/$n-report.err"; }
			if [ -s "$tmp/$n.json" ] || grep -q "report: unavailable" "$tmp/$n-report.err"; then
				fail "$p --backend $be --report: reported reads before writes, or unavailable:"
				cat "$tmp/$n.json" "$tmp/$n-report.err"
			else
				pass "$p --backend $be --report: nothing reported"
			fi
		done
	done
}

# uid 65534 under --strict, with programs whose system calls write into
# heap memory they never touched (read(2) into a fresh buffer: sort,
# python3, xz; O_DIRECT: direct_read.c). A user-mode-only userfaultfd
# would fail those with EFAULT; the file backend serves them. Output
# identical to --mode anon; and direct_read, allocating 256 MiB and
# reading 8 MiB into it, keeps its RSS far below memset's.
direct_dir=
case_nobody-kernel-access() {
	need_nobody
	local b p
	for b in /usr/bin/xz /usr/bin/sort /usr/bin/python3; do
		[ -x $b ] || skip "$b not installed (scripts/deps.sh installs it)"
	done
	# A daemon listening changes nothing: refpage-run's default is the
	# file backend (and uid 65534 only gets a user-mode-only userfaultfd).
	start_daemon
	make_inputs
	local be=file
	# The O_DIRECT input on a filesystem that does O_DIRECT ($TMPDIR
	# may be a tmpfs, which does not).
	local d
	for d in "$tmp" /var/tmp; do
		[ "$d" = /var/tmp ] && { d=$(mktemp -d /var/tmp/refpage-direct.XXXXXX) || break; chmod 755 "$d"; direct_dir=$d; }
		head -c 8M /dev/urandom >"$d/direct.bin" && chmod 644 "$d/direct.bin"
		run direct-probe root -- "$RP_DIRECT_READ" "$d/direct.bin" 8
		[ "$rc" = 77 ] || break
	done
	local direct=1
	if [ "$rc" = 77 ]; then
		direct=0
		echo "no O_DIRECT here: $(cat "$tmp/direct-probe.err")"
	fi
	# python3 reads the whole file into one fresh bytes object.
	local py='import hashlib, sys; d = open(sys.argv[1], "rb").read(); print(len(d), hashlib.sha256(d).hexdigest())'
	local argv
	for p in sort python3 xz direct; do
		case $p in
		sort) argv=(/usr/bin/sort --parallel=2 -S 64M -k1,1n "$tmp/shuf.txt") ;;
		python3) argv=(/usr/bin/python3 -c "$py" "$tmp/shuf.txt") ;;
		xz) argv=(/usr/bin/xz -T2 --block-size=1MiB -6 -c "$tmp/seq.txt") ;;
		direct) [ $direct = 1 ] || continue; argv=("$RP_DIRECT_READ" "$d/direct.bin" 256) ;;
		esac
		run "$p-anon" nobody -- $(rp) --mode anon -- "${argv[@]}"
		[ "$rc" = 0 ] || { fail "$p as nobody, --mode anon: status $rc"; cat "$tmp/$p-anon.err"; continue; }
		run "$p-refpage" nobody -- $(rp) --strict --stats -- "${argv[@]}"
		if [ "$rc" = 0 ] && cmp -s "$tmp/$p-anon.out" "$tmp/$p-refpage.out"; then
			pass "$p as nobody, --strict: output identical to --mode anon ($(wc -c <"$tmp/$p-refpage.out") bytes)"
		else
			fail "$p as nobody, --strict: status $rc, output $(cmp "$tmp/$p-anon.out" "$tmp/$p-refpage.out" 2>&1 | head -1)"
			cat "$tmp/$p-refpage.err"
		fi
		grep -qE "\(backend $be\).* large blocks refpage [1-9][0-9]*, memset 0, anon [0-9]+; fallbacks 0," "$tmp/$p-refpage.err" &&
			pass "$p as nobody: large blocks from the $be backend, no fallback" ||
			{ fail "$p as nobody: not all large blocks from the $be backend:"; cat "$tmp/$p-refpage.err"; }
		count_err "$p-refpage" "EFAULT|Bad address|user-mode-only|memset of|cannot" 0
	done
	[ $direct = 1 ] || skip "O_DIRECT not supported in $tmp or /var/tmp (the other programs ran: $failures failure(s))"
	# Allocates 256 MiB, touches 8: refpage's max RSS well below memset's.
	run direct-memset nobody -- $(rp) --mode memset -- "$RP_DIRECT_READ" "$d/direct.bin" 256
	cmp -s "$tmp/direct-anon.out" "$tmp/direct-memset.out" ||
		fail "direct as nobody, --mode memset: status $rc, other output"
	local rr rm
	rr=$(sed -n 's/^direct_read: maxrss_kb //p' "$tmp/direct-refpage.err")
	rm=$(sed -n 's/^direct_read: maxrss_kb //p' "$tmp/direct-memset.err")
	if [ -n "$rr" ] && [ -n "$rm" ] && [ "$rr" -lt $((rm / 4)) ]; then
		pass "direct_read (256 MiB allocated, 8 MiB read): max RSS refpage $rr kB < memset $rm kB / 4"
	else
		fail "direct_read: max RSS refpage '${rr:-?}' kB, memset '${rm:-?}' kB: wanted refpage < memset / 4"
	fi
}

case_fork() {
	start_daemon
	need_refpages
	run fork-plain root -- "$RP_FORKALLOC" any
	expect_out fork-plain "forkalloc: ok"
	for user in root nobody; do
		[ $user = nobody ] && need_nobody
		for m in refpage memset anon; do
			e=0xaa
			[ $m = anon ] && e=0
			run "fork-$user-$m" $user -- $(rp) --mode $m -- "$RP_FORKALLOC" $e 8
			expect_out "fork-$user-$m" "forkalloc: ok"
		done
	done
	run fork-umo nobody -- $(rp) --allow-user-mode-only -- "$RP_FORKALLOC" 0xaa 8
	expect_out fork-umo "forkalloc: ok"
}

case_fallback() {
	# No daemon at all: the default backend (file) needs none, and says
	# nothing about one.
	local none="$tmp/none.sock"
	run fb-run root -- "$RP_RUN" --socket "$none" --stats -- "$RP_FORKALLOC" 0xaa 4
	expect_out fb-run "forkalloc: ok"
	count_err fb-run "refpaged" 0
	count_err fb-run "\\(backend file\\).* large blocks refpage [1-9][0-9]*, memset 0" 1
	# --report too (the file backend's report needs no daemon either),
	# and the shim on its own: nothing said, however many blocks and fork
	# children follow.
	run fb-report root -- "$RP_RUN" --socket "$none" --stats --report -- "$RP_FORKALLOC" 0xaa 4
	expect_out fb-report "forkalloc: ok"
	count_err fb-report "refpaged|unavailable" 0
	count_err fb-report "report: [0-9]+ of [0-9]+ large allocations" 1 # a report, not silence
	count_err fb-report "\\(backend file\\).* large blocks refpage [1-9][0-9]*, memset 0" 1
	run fb-shim root -- env LD_PRELOAD="$RP_SHIM" REFPAGED_SOCKET="$none" REFPAGE_RUN_STATS=1 \
		REFPAGE_RUN_REPORT=1 "$RP_FORKALLOC" 0xaa 4
	expect_out fb-shim "forkalloc: ok"
	count_err fb-shim "refpaged|unavailable" 0
	count_err fb-shim "report: [0-9]+ of [0-9]+ large allocations" 1
	count_err fb-shim "fallbacks 0," 1
	# The uffd backend asked for: memset, said once.
	run fb-uffd root -- "$RP_RUN" --socket "$none" --backend uffd --stats -- "$RP_FORKALLOC" 0xaa 4
	expect_out fb-uffd "forkalloc: ok"
	count_err fb-uffd "cannot reach refpaged" 1
	count_err fb-uffd "large blocks refpage 0, memset [1-9]" 1
	# --strict: refpage-run refuses before the program starts...
	run fb-strict root -- "$RP_RUN" --socket "$none" --backend uffd --strict -- "$RP_UNINIT"
	if [ "$rc" = 1 ] && [ ! -s "$tmp/fb-strict.out" ]; then
		pass "--strict --backend uffd without a daemon: status 1, program not run"
	else
		fail "--strict --backend uffd without a daemon: status $rc"
	fi
	count_err fb-strict "^refpage-run: --strict: cannot reach refpaged" 1
	# ...and the shim ends a process that finds no daemon later.
	run fb-strict-shim root -- env LD_PRELOAD="$RP_SHIM" REFPAGED_SOCKET="$none" REFPAGE_RUN_STRICT=1 \
		REFPAGE_RUN_BACKEND=uffd "$RP_UNINIT"
	[ "$rc" = 1 ] && pass "strict shim without a daemon: status 1" || fail "strict shim: status $rc"
	count_err fb-strict-shim "cannot reach refpaged.*--strict: exiting with status 1" 1
	# --strict with the file backend needs no daemon.
	run fb-strict-file root -- "$RP_RUN" --socket "$none" --strict -- "$RP_UNINIT"
	expect_out fb-strict-file "uninit: aa aa aa aa"
	start_daemon
	run strict-ok root -- $(rp) --strict -- "$RP_UNINIT"
	expect_out strict-ok "uninit: aa aa aa aa"
}

# The file backend's blocks are mappings of their own (never merged): past
# half vm.max_map_count live ones, further blocks use memset (said once), so
# a program holding nearly that many large blocks still has room for its
# own mappings.
case_many-blocks() {
	local max n
	max=$(cat /proc/sys/vm/max_map_count)
	n=$((max - 500))
	[ "$n" -le 300000 ] || skip "vm.max_map_count is $max: too many blocks to hold in a test"
	run many root -- "$RP_RUN" --backend file --threshold 8192 --stats -- "$RP_MANYBLOCKS" "$n" 8192
	expect_out many "manyblocks: ok $n"
	count_err many "refpage blocks live, each a mapping of its own on the file backend" 1
	count_err many "\\(backend file\\).* large blocks refpage $((max / 2)), memset [1-9][0-9]*, anon [0-9]+; fallbacks [1-9]" 1
}

# The jemalloc extent hooks example (tests/preload/test_jemalloc.c).
case_jemalloc() {
	start_daemon
	need_refpages
	# jemalloc's default (opt.retain true): the retaining arena; then with
	# opt.retain off, where extents may also be unmapped.
	for conf in "" retain:false; do
		echo "== MALLOC_CONF=$conf"
		MALLOC_CONF=$conf REFPAGED_SOCKET="$tmp/d.sock" "$RP_JEMALLOC_TEST"
		rc=$?
		[ "$rc" = 77 ] && skip "test_jemalloc skipped itself"
		[ "$rc" = 0 ] || fail "test_jemalloc (MALLOC_CONF=$conf): status $rc"
	done
}

"case_$case_name" || true
if [ "$failures" != 0 ]; then
	echo "preload-test $case_name: $failures failure(s); daemon log:"
	[ -f "$tmp/d.log" ] && cat "$tmp/d.log"
	exit 1
fi
echo "preload-test $case_name: passed"
