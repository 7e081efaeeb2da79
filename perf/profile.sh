#!/usr/bin/env bash
# perf/profile.sh: where the time goes (#18). Runs four workloads under four
# modes with `perf stat` on the program and /proc accounting of a private
# refpaged over the same run, `perf record` of the client and of the daemon
# on the uffd backend, and a decomposition of one uffd round trip (idle
# vCPUs halted vs kept busy), and writes one Markdown file.
#
# Workloads (--workloads):
#   sort           sort -S 256M of a generated 28.5 MB text file (3,000,000
#                  random numbers, fixed seed): a 256 MiB buffer, two threads
#   xz             xz -9 -T2 --block-size=4MiB of `seq 1 1100000` (7.7 MB):
#                  ~670 MB of match finder per thread, sparsely touched
#   python3        python3 tests/preload/workload.py 1500000 (dense writes)
#   rand-write-10  build/perf/refpage-bench --workloads rand-write-10
#                  --threads 1 --mib 256 (10 % of the pages, random order,
#                  one store each). refpage-bench makes its own mappings, so
#                  its mode is chosen with --modes, not by the shim: anon ->
#                  --modes anon, shim -> the same under refpage-run --mode
#                  anon, uffd -> --modes refpaged (this daemon), file ->
#                  --modes refpage-file
# Modes (--modes):
#   anon   the program alone (no shim)
#   shim   refpage-run --mode anon: the shim alone, large blocks plain anon
#   uffd   refpage-run --strict --backend uffd: refpaged serves the faults
#   file   refpage-run --strict --backend file: the kernel serves them from
#          the process's template memfd (the daemon has nothing to do)
#
# Per run: `perf stat` of the program (task-clock, user and system time,
# context switches, CPU migrations, page faults; wall = duration_time; the
# hardware counters are tried once and reported as unavailable when they
# are), max RSS (/usr/bin/time inside perf stat), and over the same run the
# daemon's CPU time (all threads, /proc/PID/task/*/schedstat; user/system
# split from /proc/PID/stat in clock ticks), its context switches
# (/proc/PID/task/*/status) and its `faults` and `pages_copied` counters
# (refpagectl stats; read outside the window). Every output must be
# byte-identical to the anon run's (refpage-bench: 0 mismatches).
# The runs are interleaved (rep by rep, the mode order rotated); tables
# show medians.
#
# Then (unless --no-record) `perf record -g` (cpu-clock: there is no PMU in
# this VM) of the client and, at the same time, of the daemon (-p) for the
# uffd mode on python3 and rand-write-10: top symbols by self time, and for
# the daemon also by inclusive time (where a UFFDIO_COPY's time goes).
#
# Then (unless --no-decompose) the round-trip decomposition: refpage-bench
# rand-write-10 (anon, uffd-thread, refpaged, refpage-file) with the idle
# vCPUs free to halt and with one SCHED_IDLE busy loop per CPU
# (`taskset -c N chrt -i 0 bash -c 'while :; do :; done'`), alternating.
#
# usage: perf/profile.sh [--reps N] [--workloads LIST] [--modes LIST]
#          [--keep-warm] [--no-record] [--no-decompose] [--bench-reps N]
#          [--top N] [--build DIR] [--out FILE] [--keep DIR] [--quick]
#   --reps N        runs per (workload, mode) (default 3)
#   --bench-reps N  refpage-bench --reps for rand-write-10 (default 5)
#   --keep-warm     a SCHED_IDLE busy loop on every CPU during the whole
#                   measurement (killed on exit): no vCPU halts, so a wake-up
#                   does not pay the hypervisor's halt exit and re-entry
#   --no-record     no perf record; --no-decompose: no decomposition runs
#   --top N         symbols per profile (default 12)
#   --keep DIR      keep the perf.data files and raw numbers in DIR
#   --quick         small inputs, one rep, 16 MiB bench (a smoke run)
#   --out FILE      default perf/results/profile.md
# Exit status: 0; 1 if a run failed or an output differed; 2 for a bad
# command line; 77 (skip, with the reason) if perf, a program or the
# build is missing or refpages cannot be had here.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
reps=3 bench_reps=5 top=12 keep_warm=0 do_record=1 do_decompose=1 quick=0
build=$root/build out=$here/results/profile.md keep=
workloads_arg=sort,xz,python3,rand-write-10 modes_arg=anon,shim,uffd,file
cmdline="perf/profile.sh $*"

die() { echo "profile: $*" >&2; exit 2; }
while (($#)); do
	case $1 in
	--reps) reps=${2:?}; shift ;;
	--bench-reps) bench_reps=${2:?}; shift ;;
	--workloads) workloads_arg=${2:?}; shift ;;
	--modes) modes_arg=${2:?}; shift ;;
	--keep-warm) keep_warm=1 ;;
	--no-record) do_record=0 ;;
	--no-decompose) do_decompose=0 ;;
	--top) top=${2:?}; shift ;;
	--build) build=${2:?}; shift ;;
	--out) out=${2:?}; shift ;;
	--keep) keep=${2:?}; shift ;;
	--quick) quick=1 ;;
	-h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (--help)" ;;
	esac
	shift
done
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive number"
[[ $bench_reps =~ ^[1-9][0-9]*$ ]] || die "--bench-reps wants a positive number"
[[ $top =~ ^[1-9][0-9]*$ ]] || die "--top wants a positive number"
((quick)) && { reps=1 bench_reps=2; }
IFS=, read -r -a workloads <<<"$workloads_arg"
IFS=, read -r -a modes <<<"$modes_arg"
for m in "${modes[@]}"; do
	case $m in anon | shim | uffd | file) ;; *) die "unknown mode '$m' (anon, shim, uffd, file)" ;; esac
done

daemon=$build/daemon/refpaged run=$build/client/refpage-run ctl=$build/client/refpagectl
bench=$build/perf/refpage-bench workload_py=$root/tests/preload/workload.py
skip() { echo "SKIP: $*"; exit 77; }
need() { [ -x "$1" ] || skip "$1 missing ($2)"; }
need /usr/bin/perf "package linux-perf"
need /usr/bin/time "package time"
for b in "$daemon" "$run" "$ctl"; do need "$b" "build first: cmake --build $build"; done
for wl in "${workloads[@]}"; do
	case $wl in
	sort) need /usr/bin/sort coreutils; need /usr/bin/shuf coreutils ;;
	xz) need /usr/bin/xz "package xz-utils" ;;
	python3) need /usr/bin/python3 "package python3" ;;
	rand-write-10) need "$bench" "build first: cmake --build $build --target refpage-bench" ;;
	*) die "unknown workload '$wl' (sort, xz, python3, rand-write-10)" ;;
	esac
done
{ command -v taskset && command -v chrt; } >/dev/null || skip "taskset/chrt missing (util-linux)"
perf stat -e task-clock -- true >/dev/null 2>&1 || skip "perf stat does not work here (perf_event_paranoid $(cat /proc/sys/kernel/perf_event_paranoid))"

workdir=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ -w /dev/shm ] && workdir=/dev/shm # outputs off the disk
w=$(mktemp -d "$workdir/profile.XXXXXX")
dpid="" spinners=()
# shellcheck disable=SC2317 # called from the trap
stop_spinners() {
	local p
	for p in "${spinners[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${spinners[@]}"; do wait "$p" 2>/dev/null || true; done
	spinners=()
}
# shellcheck disable=SC2317
cleanup() {
	stop_spinners
	[ -n "$dpid" ] && { kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null; }
	if [ -n "$keep" ]; then mkdir -p "$keep" && cp -r "$w"/. "$keep"/ 2>/dev/null; fi
	rm -rf "$w"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_spinners() {
	local c
	((${#spinners[@]} == 0)) || return 0
	for c in $(seq 0 $(($(nproc) - 1))); do
		taskset -c "$c" chrt -i 0 bash -c 'while :; do :; done' &
		spinners+=($!)
	done
	sleep 0.2
}

sock=$w/d.sock
"$daemon" --socket "$sock" >"$w/d.log" 2>&1 &
dpid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; kill -0 "$dpid" 2>/dev/null || break; sleep 0.05; done
[ -S "$sock" ] || { cat "$w/d.log"; echo "profile: refpaged did not start" >&2; exit 1; }
for m in "${modes[@]}"; do
	case $m in
	uffd) "$run" --socket "$sock" --strict --backend uffd -- true 2>"$w/probe" ||
		skip "refpages (uffd backend) unusable here: $(cat "$w/probe")" ;;
	file) "$run" --socket "$sock" --strict --backend file -- true 2>"$w/probe" ||
		skip "refpages (file backend) unusable here: $(cat "$w/probe")" ;;
	esac
done

# Hardware counters: tried once, reported.
hw=$(perf stat -x, -e cycles,instructions -- true 2>&1 | awk -F, '/cycles|instructions/ { print $3 ": " ($1 ~ /not/ ? $1 : "counted") }' | paste -sd ';' -)

# Inputs.
if ((quick)); then
	shuf -i 1-1000000000 -n 200000 --random-source=<(yes) >"$w/sort-in.txt"
	seq 1 200000 >"$w/xz-in.txt"
	py_n=100000 mib=16
else
	shuf -i 1-1000000000 -n 3000000 --random-source=<(yes) >"$w/sort-in.txt"
	seq 1 1100000 >"$w/xz-in.txt"
	py_n=1500000 mib=256
fi
touched=$(awk -v m="$mib" -v r="$bench_reps" 'BEGIN { printf "%d", int(m * 256 * 0.1 + 0.5) * r }')

# prog_cmd WORKLOAD MODE: the command in cmd[] (the mode's prefix included).
prog_cmd() {
	local pre=()
	case $2 in
	anon) ;;
	shim) pre=("$run" --socket "$sock" --mode anon --) ;;
	uffd) pre=("$run" --socket "$sock" --strict --backend uffd --) ;;
	file) pre=("$run" --socket "$sock" --strict --backend file --) ;;
	esac
	case $1 in
	sort) cmd=("${pre[@]}" /usr/bin/sort -S 256M "$w/sort-in.txt") ;;
	xz) cmd=("${pre[@]}" /usr/bin/xz -9 -T2 --block-size=4MiB -c "$w/xz-in.txt") ;;
	python3) cmd=("${pre[@]}" /usr/bin/python3 "$workload_py" "$py_n") ;;
	rand-write-10)
		local bm=anon
		case $2 in uffd) bm=refpaged ;; file) bm=refpage-file ;; esac
		cmd=("${pre[@]}" "$bench" --socket "$sock" --daemon-pid "$dpid" --modes "$bm"
			--workloads rand-write-10 --threads 1 --mib "$mib" --reps "$bench_reps" --lat-reps 0) ;;
	esac
}

# daemon_proc: "CPU_NS UTIME_TICKS STIME_TICKS CSW" of the whole daemon.
daemon_proc() {
	local ns=0 csw=0 t
	for t in /proc/"$dpid"/task/*; do
		ns=$((ns + $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null || echo 0)))
		csw=$((csw + $(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t/status" 2>/dev/null || echo 0)))
	done
	echo "$ns $(awk '{ sub(/.*\) /, ""); print $12, $13 }' /proc/"$dpid"/stat) $csw"
}
# daemon_ctr: "FAULTS PAGES_COPIED" (a round trip to the daemon).
daemon_ctr() {
	"$ctl" --socket "$sock" stats | awk '$1 == "faults" { f = $2 } $1 == "pages_copied" { p = $2 } END { print f + 0, p + 0 }'
}

# one_run WORKLOAD MODE REP: a line on $w/raw:
# wl mode rep wall_s task_ms user_s sys_s csw mig pf maxrss_kib
#   d_cpu_ms d_user_s d_sys_s d_csw d_faults d_pages digest bench_ns bench_srvns
one_run() {
	local wl=$1 m=$2 c0 c1 p0 p1 digest bns=- bsrv=-
	prog_cmd "$wl" "$m"
	c0=$(daemon_ctr)
	p0=$(daemon_proc)
	if ! perf stat -x, -o "$w/stat" -e duration_time,task-clock,user_time,system_time,context-switches,cpu-migrations,page-faults \
		-- /usr/bin/time -f '%M' -o "$w/time" "${cmd[@]}" >"$w/stdout" 2>"$w/stderr"; then
		echo "profile: $wl under $m failed:" >&2
		cat "$w/stderr" >&2
		exit 1
	fi
	p1=$(daemon_proc)
	c1=$(daemon_ctr)
	if [ "$wl" = rand-write-10 ]; then
		# the bench's own row: ns/page and server CPU ns/page; its exit
		# status already says 0 mismatches
		read -r bns bsrv < <(awk '$2 == "rand-write-10" { print $4, $14 }' "$w/stdout")
		digest=ok
	else
		digest=$(sha256sum <"$w/stdout" | cut -c1-16)
	fi
	awk -F, -v wl="$wl" -v m="$m" -v rep="$3" -v rss="$(tail -1 "$w/time")" -v p0="$p0" -v p1="$p1" \
		-v c0="$c0" -v c1="$c1" -v hz="$(getconf CLK_TCK)" -v dg="$digest" -v bns="$bns" -v bsrv="$bsrv" '
		$3 ~ /^duration_time/ { wall = $1 / 1e9 } $3 == "task-clock" { tc = $1 }
		$3 == "user_time" { ut = $1 / 1e9 } $3 == "system_time" { st = $1 / 1e9 }
		$3 == "context-switches" { cs = $1 } $3 == "cpu-migrations" { mg = $1 } $3 == "page-faults" { pf = $1 }
		END {
			split(p0, a, " "); split(p1, b, " "); split(c0, x, " "); split(c1, y, " ")
			printf "%s %s %s %.4f %.2f %.3f %.3f %d %d %d %d %.3f %.3f %.3f %d %d %d %s %s %s\n",
				wl, m, rep, wall, tc, ut, st, cs, mg, pf, rss,
				(b[1] - a[1]) / 1e6, (b[2] - a[2]) / hz, (b[3] - a[3]) / hz, b[4] - a[4],
				y[1] - x[1], y[2] - x[2], dg, bns, bsrv
		}' "$w/stat" >>"$w/raw"
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)
# The daemon's idle rate (its workers' 0.25 s timers), to read small deltas against.
i0=$(daemon_proc); sleep 2; i1=$(daemon_proc)
idle=$(awk -v a="$i0" -v b="$i1" 'BEGIN { split(a, x, " "); split(b, y, " ");
	printf "%.1f context switches/s, %.2f ms CPU/s", (y[4] - x[4]) / 2, (y[1] - x[1]) / 2e6 }')

((keep_warm)) && start_spinners
for wl in "${workloads[@]}"; do prog_cmd "$wl" anon; "${cmd[@]}" >/dev/null 2>&1; done # warm the caches
: >"$w/raw"
for ((i = 0; i < reps; i++)); do
	for wl in "${workloads[@]}"; do
		for ((k = 0; k < ${#modes[@]}; k++)); do # rotate the order run by run
			one_run "$wl" "${modes[(k + i) % ${#modes[@]}]}" "$i"
		done
	done
	echo "profile: rep $((i + 1))/$reps done ($(($(date +%s) - t_start)) s)" >&2
done

# --- perf record of the uffd path ---------------------------------------
# record_pair WORKLOAD: client and daemon at once, into $w/rec-WL-{client,daemon}.data
record_pair() {
	local wl=$1 rp
	prog_cmd "$wl" uffd
	perf record -q -g -p "$dpid" -o "$w/rec-$wl-daemon.data" >"$w/rec-$wl-daemon.log" 2>&1 &
	rp=$!
	sleep 0.5
	perf record -q -g -o "$w/rec-$wl-client.data" -- "${cmd[@]}" >/dev/null 2>"$w/rec-$wl-client.log" ||
		{ cat "$w/rec-$wl-client.log" >&2; exit 1; }
	kill -INT "$rp"
	wait "$rp" || true
}
# top_syms FILE N [children] [perf report args...]: "| pct | symbol |" rows
# by self time (or "| children | self | symbol |" by inclusive time)
top_syms() {
	local f=$1 n=$2 ch=--no-children
	shift 2
	[ "${1:-}" = children ] && ch=--children
	[ "${1:-}" = children ] || [ "${1:-}" = self ] && shift
	perf report -i "$f" --stdio $ch --sort sym -g none --percent-limit 0.3 "$@" 2>/dev/null |
		awk -v n="$n" -v ch="$ch" '
		/^#/ || NF == 0 { next }
		{ if (ch == "--children") { pct = $1; self = $2; $1 = ""; $2 = "" } else { pct = $1; $1 = "" }
		  sub(/^ +/, ""); gsub(/\|/, "\\|")
		  if (++k > n) next
		  if (ch == "--children") printf "| %s | %s | `%s` |\n", pct, self, $0
		  else printf "| %s | `%s` |\n", pct, $0 }'
}
# dso_split FILE [perf report args...]: "kernel 21 %, python3.11 74 %, ..." (>= 1 %)
dso_split() {
	local f=$1
	shift
	perf report -i "$f" --stdio --no-children --sort dso -g none "$@" 2>/dev/null |
		awk '/^#/ || NF < 2 { next } { v = $1; sub(/%/, "", v); if (v + 0 < 1) next
			d = $2; if (d == "[kernel.kallsyms]") d = "kernel"; out = out (out ? ", " : "") d " " v "%" } END { print out }'
}
# ku_split FILE [perf report args...]: "kernel K%, user U%" from the symbols
ku_split() {
	local f=$1
	shift
	perf report -i "$f" --stdio --no-children --sort sym -g none "$@" 2>/dev/null |
		awk '/^#/ || NF < 3 { next } { v = $1; sub(/%/, "", v); if ($2 == "[k]") k += v; else u += v }
			END { printf "kernel %.1f%%, user %.1f%%", k, u }'
}
# worker_tids FILE: the threads of the recorded process other than its main
# thread (refpage-bench's touching threads), as a --tid list
worker_tids() { perf script -i "$1" -F pid,tid 2>/dev/null | awk -F/ '{ gsub(/ /, ""); if ($1 != $2) print $2 }' | sort -u | paste -sd, -; }
samples() { perf report -i "$1" --stdio --no-children --sort sym -g none 2>/dev/null | awk '/^# Samples:/ { if (!s++) print $3 }'; }
rec_wls=()
if ((do_record)) && [[ " ${modes[*]} " == *" uffd "* ]]; then
	for wl in python3 rand-write-10; do
		[[ " ${workloads[*]} " == *" $wl "* ]] || continue
		record_pair "$wl"
		rec_wls+=("$wl")
	done
	echo "profile: perf record done ($(($(date +%s) - t_start)) s)" >&2
fi

# --- round-trip decomposition --------------------------------------------
# place PLACEMENT: pins the daemon's threads and sets pin[] for the bench.
#   free   nothing pinned (the scheduler's choice, as in the runs above)
#   same   daemon, handler and toucher on CPU 0: each wake-up a direct switch
#   split  daemon and uffd-thread's handler on CPU 0, the toucher on CPU 1:
#          each wake-up an IPI to the other vCPU
place() {
	local all=0-$(($(nproc) - 1))
	case $1 in
	free) taskset -a -p -c "$all" "$dpid" >/dev/null; pin=() ;;
	same) taskset -a -p -c 0 "$dpid" >/dev/null; pin=(--cpus 0 --handler-cpu 0) ;;
	split) taskset -a -p -c 0 "$dpid" >/dev/null; pin=(--cpus 1 --handler-cpu 0) ;;
	esac
}
placements=(free same split)
(($(nproc) >= 2)) || placements=(free same)
if ((do_decompose)) && [ -x "$bench" ]; then
	: >"$w/decomp"
	was_warm=${#spinners[@]}
	for _ in 1 2; do
		for pl in "${placements[@]}"; do
			place "$pl"
			for warm in 0 1; do
				if ((warm)); then start_spinners; else stop_spinners; fi
				"$bench" --socket "$sock" --daemon-pid "$dpid" --modes anon,uffd-thread,refpaged,refpage-file \
					--workloads rand-write-10 --threads 1 --mib "$mib" --reps 2 --lat-reps 0 \
					"${pin[@]}" >"$w/dstdout" ||
					{ cat "$w/dstdout" >&2; echo "profile: decomposition run failed" >&2; exit 1; }
				awk -v warm="$warm" -v pl="$pl" '$2 == "rand-write-10" { print warm, $1, $4, $10, $11, $14, pl }' \
					"$w/dstdout" >>"$w/decomp"
			done
		done
	done
	place free
	if ((was_warm)); then start_spinners; else stop_spinners; fi
	echo "profile: decomposition done ($(($(date +%s) - t_start)) s)" >&2
fi
stop_spinners
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the report ------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (!NR) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# col WL MODE N [FILE]: the median of field N over the raw lines of (WL, MODE)
col() { awk -v wl="$1" -v m="$2" -v n="$3" '$1 == wl && $2 == m { print $n }' "${4:-$w/raw}" | median; }
bad=0
{
	echo "# Profile: where the time goes (#18)"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); \`$cmdline\`; $reps run(s) per cell, interleaved, medians;" \
		"$(($(date +%s) - t_start)) s in all."
	echo
	echo "$(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); kernel $(uname -r);" \
		"$(grep -o 'haltpoll.guest_halt_poll_ns=[0-9]*' /proc/cmdline || echo 'guest halt polling: kernel default');" \
		"cpuidle driver $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo '?');" \
		"THP $(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo n/a);" \
		"$(perf --version). Hardware counters: ${hw:-none reported} (so \`perf record\` samples cpu-clock," \
		"a timer: time spent with interrupts off lands on the instruction that enables them)." \
		"Load average $load0 at the start, $load1 at the end." \
		"Busy loops on idle vCPUs (--keep-warm): $( ((keep_warm)) && echo "yes, one SCHED_IDLE loop per CPU during the runs" || echo no)."
	echo "refpaged: $(grep -o 'ready: .*' "$w/d.log" | head -1 | sed 's/;.*//'); idle, it does $idle."
	echo
	echo "## Per run (medians)"
	echo
	echo "Wall: perf's duration_time; CPU: task-clock of the program and all its threads (user + sys);"
	echo "csw, migr, faults: perf stat's context-switches, cpu-migrations, page-faults (all threads);"
	echo "refpaged: its CPU time and context switches over the same run (all threads), the uffd faults it"
	echo "answered and the pages it copied (fault-around fills up to 16 per fault)."
	echo
	echo "| workload | mode | wall s | CPU s | user s | sys s | csw | migr | faults | max RSS MiB | refpaged CPU ms (user/sys) | refpaged csw | uffd faults | pages copied | output |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
	for wl in "${workloads[@]}"; do
		ref=$(awk -v wl="$wl" '$1 == wl && $2 == "anon" { print $18; exit }' "$w/raw")
		for m in "${modes[@]}"; do
			ndiff=$(awk -v wl="$wl" -v m="$m" -v r="$ref" '$1 == wl && $2 == m && $18 != r && r != ""' "$w/raw" | wc -l)
			same=identical
			[ "$wl" = rand-write-10 ] && same="0 mismatches"
			((ndiff == 0)) || { same="DIFFERS in $ndiff run(s)"; bad=1; }
			printf '| %s | %s | %.3f | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f | %.1f | %.1f (%.2f/%.2f s) | %.0f | %.0f | %.0f | %s |\n' \
				"$wl" "$m" "$(col "$wl" "$m" 4)" "$(awk -v t="$(col "$wl" "$m" 5)" 'BEGIN { print t / 1000 }')" \
				"$(col "$wl" "$m" 6)" "$(col "$wl" "$m" 7)" "$(col "$wl" "$m" 8)" "$(col "$wl" "$m" 9)" \
				"$(col "$wl" "$m" 10)" "$(awk -v k="$(col "$wl" "$m" 11)" 'BEGIN { print k / 1024 }')" \
				"$(col "$wl" "$m" 12)" "$(col "$wl" "$m" 13)" "$(col "$wl" "$m" 14)" "$(col "$wl" "$m" 15)" \
				"$(col "$wl" "$m" 16)" "$(col "$wl" "$m" 17)" "$same"
		done
	done
	echo
	echo "## Per fault and per page"
	echo
	echo "Pages: max RSS / 4 KiB (a floor on the pages touched); for rand-write-10 the pages its reps touched"
	echo "($touched: each rep a fresh mapping; the process's setup and 0.1 s timer calibration are in its CPU). uffd faults and pages copied: refpaged's"
	echo "counters. Extra csw / uffd fault: the program's context switches beyond the same workload's anon"
	echo "median, per fault the daemon answered (1 = each fault sleeps once); extra sys µs / uffd fault: the"
	echo "same for system time. refpaged µs / fault: the daemon's CPU (all threads, idle timers included) per fault."
	echo "For rand-write-10 the bench's own ns per touched page (median of its reps; its server CPU ns/page"
	echo "for the uffd mode) is beside it."
	echo
	echo "| workload | mode | faults / page | µs CPU / page | uffd faults / page | pages copied / uffd fault | extra csw / uffd fault | extra sys µs / uffd fault | refpaged µs / uffd fault | refpaged csw / uffd fault | bench ns/page (server ns/page) |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for wl in "${workloads[@]}"; do
		acs=$(col "$wl" anon 8) ast=$(col "$wl" anon 7)
		for m in "${modes[@]}"; do
			awk -v wl="$wl" -v m="$m" -v tc="$(col "$wl" "$m" 5)" -v pf="$(col "$wl" "$m" 10)" -v rss="$(col "$wl" "$m" 11)" \
				-v df="$(col "$wl" "$m" 16)" -v dp="$(col "$wl" "$m" 17)" -v cs="$(col "$wl" "$m" 8)" -v st="$(col "$wl" "$m" 7)" \
				-v acs="$acs" -v ast="$ast" -v dc="$(col "$wl" "$m" 12)" -v dcs="$(col "$wl" "$m" 15)" \
				-v bns="$(col "$wl" "$m" 19)" -v bsrv="$(col "$wl" "$m" 20)" -v touched="$touched" 'BEGIN {
				pg = (wl == "rand-write-10") ? touched : rss / 4; f = (df >= 100)
				b = (wl == "rand-write-10") ? sprintf("%.0f", bns) (m == "uffd" ? sprintf(" (%.0f)", bsrv) : "") : "-"
				printf "| %s | %s | %.3f | %.2f | %.3f | %s | %s | %s | %s | %s | %s |\n", wl, m, pf / pg, tc * 1000 / pg, df / pg,
					f ? sprintf("%.2f", dp / df) : "-", f ? sprintf("%.2f", (cs - acs) / df) : "-",
					f ? sprintf("%.1f", (st - ast) * 1e6 / df) : "-", f ? sprintf("%.1f", dc * 1000 / df) : "-",
					f ? sprintf("%.2f", dcs / df) : "-", b }'
		done
	done
	echo
	if ((${#rec_wls[@]})); then
		echo "## perf record, uffd backend"
		echo
		echo "\`perf record -g\` (cpu-clock, 4 kHz) of the program under \`refpage-run --strict --backend uffd\`"
		echo "and, during the same run, of refpaged (\`-p\`). Self time by symbol"
		echo "(\`perf report --stdio --no-children --sort sym -g none\`); \`[k]\` kernel, \`[.]\` user."
		for wl in "${rec_wls[@]}"; do
			cf=$w/rec-$wl-client.data df=$w/rec-$wl-daemon.data filt=() what=""
			if [ "$wl" = rand-write-10 ]; then
				tids=$(worker_tids "$cf")
				[ -z "$tids" ] || { filt=(--tid "$tids" --percentage relative); what=", its touching thread only (the main thread's timer calibration and setup left out)"; }
			fi
			echo
			echo "### $wl: the program ($(samples "$cf") samples in all$what)"
			echo
			echo "Kernel against user: $(ku_split "$cf" "${filt[@]}")$([ ${#filt[@]} -gt 0 ] || echo "; by object: $(dso_split "$cf")")."
			echo
			echo "| self % | symbol |"
			echo "|--:|---|"
			top_syms "$cf" "$top" self "${filt[@]}"
			echo
			echo "### $wl: refpaged ($(samples "$df") samples)"
			echo
			echo "Kernel against user: $(ku_split "$df"); by object: $(dso_split "$df")."
			echo
			echo "| self % | symbol |"
			echo "|--:|---|"
			top_syms "$df" "$top"
			echo
			echo "Inclusive (\`--children\`): where its time goes, callees included:"
			echo
			echo "| children % | self % | symbol |"
			echo "|--:|--:|---|"
			top_syms "$df" $((top + 12)) children
		done
		echo
	fi
	if [ -s "${w}/decomp" ]; then
		echo "## One uffd round trip: wake-ups against the server's CPU"
		echo
		echo "\`refpage-bench --modes anon,uffd-thread,refpaged,refpage-file --workloads rand-write-10 --threads 1"
		echo "--mib $mib --reps 2 --lat-reps 0\` (plus the placement's --cpus/--handler-cpu), twice per cell, alternating: *halting* with the idle vCPUs"
		echo "free to halt, *warm* with one \`taskset -c N chrt -i 0 bash -c 'while :; do :; done'\` per CPU"
		echo "(SCHED_IDLE: it yields to anything else at once, but the vCPU never halts). Placement: *free*"
		echo "nothing pinned; *same* the daemon (\`taskset -a -p\`), the handler and the touching thread all on"
		echo "CPU 0 (each wake-up a switch on that CPU, no IPI); *split* daemon and handler on CPU 0, the touching"
		echo "thread on CPU 1 (each wake-up an IPI to the other vCPU). Medians of the bench's per-cell medians;"
		echo "server CPU is the handler thread's (uffd-thread) or the daemon's, per touched page."
		echo
		echo "| mode | placement | ns/page halting | ns/page warm | halting − warm | server CPU ns/page (halting / warm) | warm − server CPU | faults/page | csw/page (halting / warm) |"
		echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
		for m in anon uffd-thread refpaged refpage-file; do
			for pl in "${placements[@]}"; do
				sel() { awk -v m="$m" -v pl="$pl" -v warm="$1" -v n="$2" '$1 == warm && $2 == m && $7 == pl && $n != "-" { print $n }' "$w/decomp" | median; }
				awk -v m="$m" -v pl="$pl" -v h="$(sel 0 3)" -v k="$(sel 1 3)" -v sh="$(sel 0 6)" -v sk="$(sel 1 6)" \
					-v fp="$(sel 0 4)" -v ch="$(sel 0 5)" -v ck="$(sel 1 5)" 'BEGIN {
					s = (sh != "nan")
					printf "| %s | %s | %.0f | %.0f | %.0f | %s | %s | %.3f | %.3f / %.3f |\n", m, pl, h, k, h - k,
						s ? sprintf("%.0f / %.0f", sh, sk) : "-", s ? sprintf("%.0f", k - sk) : "-", fp, ch, ck }'
			done
		done
		echo
	fi
	echo "## Reading (generated)"
	echo
	for wl in "${workloads[@]}"; do
		[[ " ${modes[*]} " == *" uffd "* ]] || break
		awk -v wl="$wl" -v aw="$(col "$wl" anon 4)" -v uw="$(col "$wl" uffd 4)" -v atc="$(col "$wl" anon 5)" \
			-v utc="$(col "$wl" uffd 5)" -v ast="$(col "$wl" anon 7)" -v ust="$(col "$wl" uffd 7)" \
			-v df="$(col "$wl" uffd 16)" -v dp="$(col "$wl" uffd 17)" -v dc="$(col "$wl" uffd 12)" \
			-v fw="$(col "$wl" file 4)" 'BEGIN {
			printf "- %s: uffd backend %.2f s wall against anon %.2f s (%.2f×)%s; the program used %.2f s of CPU (anon %.2f s, of it system %.2f against %.2f s)", wl, uw, aw, (aw > 0 ? uw / aw : 0),
				(fw != "nan" ? sprintf(", file backend %.2f s (%.2f×)", fw, (aw > 0 ? fw / aw : 0)) : ""), utc / 1000, atc / 1000, ust, ast
			if (df > 0) printf " and refpaged %.0f ms for %d faults and %d pages: %.1f µs of daemon CPU per fault", dc, df, dp, dc * 1000 / df
			print "." }'
	done
} >"$w/profile.md"
mkdir -p "$(dirname "$out")"
cp "$w/profile.md" "$out"
cat "$w/profile.md"
echo "profile: wrote $out" >&2
exit $bad
