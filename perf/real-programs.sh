#!/usr/bin/env bash
# perf/real-programs.sh: unmodified programs that allocate large buffers,
# under several ways of getting (or not getting) pattern-initialised memory:
#   anon     plain glibc, no shim (the baseline)
#   memset   refpage-run --mode memset: each large block memset to 0xAA
#   perturb  GLIBC_TUNABLES=glibc.malloc.perturb=170, no shim: glibc fills
#            every allocation with 0x55 (170 ^ 0xff) and freed memory with 0xAA
#   refpage  refpage-run --mode refpage --strict: refpage blocks of 0xAA
#            (never a silent fallback to memset) on refpage-run's default
#            backend: the file backend, whose faults the kernel serves
#   refpage-uffd  the same with --backend uffd: a private refpaged serves
#            the faults (the ablation of refpage-run's default); not in the
#            default --modes
#   refpage-file  the same with --backend file (what refpage is unless
#            REFPAGE_RUN_BACKEND says otherwise); not in the default --modes
#   report   refpage-run --report --report-format json (docs/report.md), on
#            the default backend (file): pages read and never written, found
#            in /proc/self/pagemap; not in the default --modes
#   report-uffd  the same with --backend uffd: refpaged records each read
#            fault of a page never written (one page per fill); not in the
#            default --modes
#   shim     refpage-run --mode anon: the shim alone, no pattern: every
#            large block its own anonymous mmap (zeros), never glibc's
#            reused heap; set beside anon it is the shim's own cost, beside
#            refpage the pattern's; not in the default --modes
# Median wall time and max RSS of --runs N runs each (/usr/bin/time -f
# "%e %M"), the modes interleaved run by run; every run's output must be
# byte-identical to the anon runs'. Writes a Markdown table (with the
# MAP_REFPAGE patch's PDFium numbers beside it) to --out. A mode's row says
# "noise" when its median wall time is nearer anon's than the larger of the
# two min-max spreads (the runs cannot tell it from anon).
#
# Programs (Debian packages; scripts/deps.sh installs them):
#   pdftoppm  poppler-utils: renders all 36 pages of libtasn1.pdf (the
#             libtasn1 manual, package libtasn1-doc: 328 kB, letter size)
#             at 150 dpi: a fresh 6 MB page bitmap per page, fully written
#   xz        xz-utils: xz -9 -T2 --block-size=4MiB of 7.7 MB of text (seq):
#             each of the two encoder threads allocates ~670 MB of match
#             finder and dictionary and touches a few MB of it (sparse)
#   python3   tests/preload/workload.py 1500000: lists grown by realloc, a
#             dict, sorting, big bytes objects, two hashing threads (dense)
#   sort      coreutils: LC_ALL=C sort -S 256M --parallel=2 of 37 MB of
#             generated text (1.5 M lines): one 256 MiB buffer that read(2)
#             fills (kernel-mode faults) with the input and sort's line
#             table at its end, ~100 MB of it touched (sparse); 37 MB out
#   gcc       gcc -O2 -c -pipe -frandom-seed of a generated C file (300
#             functions with a loop each, a 100000-entry const table):
#             cc1's memory is mostly its garbage collector's own 2 MiB
#             mmap chunks, which the shim never sees; a handful of large
#             malloc blocks (hash tables, vectors; half of them calloc, so
#             anonymous in every mode) (a program the shim barely touches)
#   sqlite3   sqlite3 -batch with PRAGMA cache_size of 256 MiB and
#             temp_store MEMORY: a table of 600000 rows inserted by a
#             recursive CTE, an index, aggregates, and the group_concat
#             of one column in order (10 MB, hashed with sha3): the page
#             cache is small blocks on the brk heap, the few large blocks
#             are that string grown by realloc (dense); the database
#             (deterministic) is part of the output
#   convert   ImageMagick 6 (/usr/bin/convert): -seed 7 plasma:fractal of
#             1500x1000, -resize 200%, -blur 0x3, two threads, written as
#             an 8-bit PPM: pixel caches of 12, 24 and three of 48 MB, each
#             fully written (dense); stays under Debian's policy.xml limits
#             (memory 256 MiB, area 128 MP): no disk cache
#
# usage: perf/real-programs.sh [--runs N] [--programs LIST] [--quick]
#          [--build DIR] [--daemon PATH] [--run PATH] [--socket PATH]
#          [--out FILE] [--workdir DIR] [--fault-around N] [--modes LIST]
#          [--user USER] [--tsv FILE]
#   --programs  default pdftoppm,xz,python3,sort,gcc,sqlite3,convert
#   --modes   which of anon,memset,perturb,refpage,refpage-uffd,refpage-file,
#             report,report-uffd,shim
#             (default anon,memset,perturb,refpage; anon always runs: it is
#             the reference)
#   --user    run every program (and refpage-run) as USER (setpriv, no
#             supplementary groups); the private refpaged stays root's
#   --quick   small inputs (CI smoke: tests/preload, --runs 1)
#   --socket  use a running refpaged instead of starting a private one
#   --fault-around N  the private refpaged's largest fill window (its default: 16)
#   --tsv FILE  also the table's numbers, one line a cell, tab-separated:
#             program mode wall_med wall_min wall_max rss_med rss_min rss_max
#             cpu_med daemon_cpu_med identical (perf/goals.sh reads it)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=10 programs=pdftoppm,xz,python3,sort,gcc,sqlite3,convert quick=0 build=$root/build out=$here/results/real-programs.md
daemon= run= socket= workdir= daemon_args=() modes_arg=anon,memset,perturb,refpage user= tsv=
cmdline="perf/real-programs.sh $*"

die() { echo "real-programs: $*" >&2; exit 2; }
while (($#)); do
	case $1 in
	--runs) runs=${2:?}; shift ;;
	--programs) programs=${2:?}; shift ;;
	--quick) quick=1 ;;
	--build) build=${2:?}; shift ;;
	--daemon) daemon=${2:?}; shift ;;
	--run) run=${2:?}; shift ;;
	--socket) socket=${2:?}; shift ;;
	--out) out=${2:?}; shift ;;
	--workdir) workdir=${2:?}; shift ;;
	--fault-around) daemon_args=(--fault-around "${2:?}"); shift ;;
	--modes) modes_arg=${2:?}; shift ;;
	--user) user=${2:?}; shift ;;
	--tsv) tsv=${2:?}; shift ;;
	-h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (--help)" ;;
	esac
	shift
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"
daemon=${daemon:-$build/daemon/refpaged}
run=${run:-$build/client/refpage-run}
pdf=/usr/share/doc/libtasn1-doc/libtasn1.pdf
workload=$root/tests/preload/workload.py
modes=(anon)
IFS=, read -r -a want_modes <<<"$modes_arg"
for m in "${want_modes[@]}"; do
	case $m in
	anon) ;;
	memset | perturb | refpage | refpage-uffd | refpage-file | report | report-uffd | shim) modes+=("$m") ;;
	*) die "unknown mode '$m' (anon, memset, perturb, refpage, refpage-uffd, refpage-file, report, report-uffd, shim)" ;;
	esac
done
# as[]: the prefix that runs a command as --user (empty: as we are).
as=()
if [ -n "$user" ]; then
	id -u "$user" >/dev/null 2>&1 || die "--user: no user '$user'"
	[ "$(id -u)" = 0 ] || { echo "SKIP: --user needs root (setpriv)"; exit 77; }
	as=(setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups)
fi

# A missing tool is a skip (77) for the CTest smoke, with the reason.
need() { [ -e "$1" ] || { echo "SKIP: $1 missing ($2; scripts/deps.sh installs it)"; exit 77; }; }
need /usr/bin/time "package time"
[ -n "$socket" ] || need "$daemon" "build refpaged first"
need "$run" "build refpage-run first"
IFS=, read -r -a progs <<<"$programs"
for p in "${progs[@]}"; do
	case $p in
	pdftoppm) need /usr/bin/pdftoppm "package poppler-utils"; need "$pdf" "package libtasn1-doc" ;;
	xz) need /usr/bin/xz "package xz-utils" ;;
	python3) need /usr/bin/python3 "package python3" ;;
	sort) need /usr/bin/sort "package coreutils" ;;
	gcc) need /usr/bin/gcc "package gcc" ;;
	sqlite3) need /usr/bin/sqlite3 "package sqlite3" ;;
	convert)
		need /usr/bin/convert "package imagemagick"
		# A policy.xml stricter than Debian's may forbid the coders or sizes.
		if ! /usr/bin/convert -seed 7 -size 8x8 plasma:fractal -depth 8 ppm:- >/dev/null 2>&1; then
			echo "SKIP: /usr/bin/convert cannot make a plasma: PPM here (ImageMagick's policy.xml?)"
			exit 77
		fi
		;;
	*) die "unknown program '$p' (pdftoppm, xz, python3, sort, gcc, sqlite3, convert)" ;;
	esac
done

if [ -z "$workdir" ]; then
	workdir=${TMPDIR:-/tmp}
	[ -d /dev/shm ] && [ -w /dev/shm ] && workdir=/dev/shm # outputs off the disk
fi
w=$(mktemp -d "$workdir/real-programs.XXXXXX")
chmod 755 "$w" # --user reaches the socket and the inputs
dpid=
# shellcheck disable=SC2317 # called from the trap
cleanup() {
	[ -n "$dpid" ] && { kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null; }
	rm -rf "$w"
}
trap cleanup EXIT

if [ -z "$socket" ]; then
	socket=$w/d.sock
	"$daemon" --socket "$socket" "${daemon_args[@]}" >"$w/d.log" 2>&1 &
	dpid=$!
	for _ in $(seq 200); do [ -S "$socket" ] && break; sleep 0.05; done
	[ -S "$socket" ] || { cat "$w/d.log"; die "refpaged did not start"; }
fi
if ! "${as[@]}" "$run" --strict --socket "$socket" -- true 2>"$w/probe"; then
	echo "SKIP: refpages unusable here: $(cat "$w/probe")"
	exit 77
fi

# Inputs.
if ((quick)); then
	seq 1 200000 >"$w/xz-in.txt"
	py_n=100000 pdf_pages=(-f 1 -l 3)
	sort_n=60000 gcc_funcs=15 gcc_table=2000 sql_rows=30000 im_size=300x200
else
	seq 1 1100000 >"$w/xz-in.txt"
	py_n=1500000 pdf_pages=()
	sort_n=1500000 gcc_funcs=300 gcc_table=100000 sql_rows=600000 im_size=1500x1000
fi
for p in "${progs[@]}"; do
	case $p in
	sort) # lines "H H%1000 line-N", H a multiplicative hash of N (unsorted)
		seq 1 "$sort_n" | awk '{ h = ($1 * 2654435761) % 4294967296
			printf "%08x %d line-%d\n", h, h % 1000, $1 }' >"$w/sort-in.txt" ;;
	gcc)
		awk -v n="$gcc_funcs" -v t="$gcc_table" 'BEGIN {
			print "typedef unsigned long u64;"
			printf "const u64 table[%d] = {\n", t
			for (i = 0; i < t; i++) printf "\t%du,\n", (i * 2654435761) % 4294967296
			print "};"
			for (i = 0; i < n; i++) {
				printf "u64 f%d(const u64 *v, int n)\n{\n\tu64 x = %d;\n", i, i * 7 + 1
				printf "\tfor (int k = 0; k < n; k++)\n"
				printf "\t\tx = x * %du + v[k] + table[(x + %d) %% %d];\n", (i % 97) * 2 + 3, i, t
				printf "\treturn x;\n}\n"
			} }' >"$w/gcc-in.c" ;;
	sqlite3)
		cat >"$w/sqlite.sql" <<-EOF
			PRAGMA cache_size = -262144;
			PRAGMA journal_mode = OFF;
			PRAGMA synchronous = OFF;
			PRAGMA temp_store = MEMORY;
			CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, g INTEGER, s TEXT);
			WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $sql_rows)
			INSERT INTO t SELECT i, (i * 2654435761) % 4294967296, i % 1000,
				printf('row-%08d', (i * 40503) % 1000003) FROM c;
			CREATE INDEX t_k ON t(k);
			SELECT count(*), sum(k), min(s), max(s) FROM t;
			SELECT g, count(*), sum(k) % 1000003, max(s) FROM t GROUP BY g ORDER BY sum(k) DESC LIMIT 5;
			SELECT k, s FROM t WHERE k BETWEEN 1000000 AND 2000000 ORDER BY k LIMIT 3;
			SELECT length(x), hex(sha3(x)) FROM (SELECT group_concat(s, ',') AS x FROM (SELECT s FROM t ORDER BY s));
		EOF
		;;
	esac
done

# prog_cmd PROG OUTDIR: the command in cmd[], writing into OUTDIR.
prog_cmd() {
	case $1 in
	pdftoppm) cmd=(/usr/bin/pdftoppm -r 150 "${pdf_pages[@]}" "$pdf" "$2/page") ;;
	xz) cmd=(/usr/bin/xz -9 -T2 --block-size=4MiB -c "$w/xz-in.txt") ;;
	python3) cmd=(/usr/bin/python3 "$workload" "$py_n") ;;
	sort) cmd=(env LC_ALL=C /usr/bin/sort -S 256M --parallel=2 "$w/sort-in.txt") ;;
	gcc) cmd=(/usr/bin/gcc -O2 -pipe -frandom-seed=real-programs -c -o "$2/gcc-in.o" "$w/gcc-in.c") ;;
	sqlite3) cmd=(/usr/bin/sqlite3 -batch "$2/sqlite.db" ".read $w/sqlite.sql") ;;
	convert) cmd=(/usr/bin/convert -limit thread 2 -seed 7 -size "$im_size" plasma:fractal
		-resize 200% -blur 0x3 -depth 8 "ppm:$2/image.ppm") ;;
	esac
}

mode_pre() {
	case $1 in
	anon) pre=() ;;
	memset) pre=("$run" --socket "$socket" --mode memset --) ;;
	perturb) pre=(env GLIBC_TUNABLES=glibc.malloc.perturb=170) ;;
	refpage) pre=("$run" --socket "$socket" --strict --mode refpage --) ;;
	refpage-uffd) pre=("$run" --socket "$socket" --strict --mode refpage --backend uffd --) ;;
	refpage-file) pre=("$run" --socket "$socket" --strict --mode refpage --backend file --) ;;
	report) pre=("$run" --socket "$socket" --strict --mode refpage --report="$w/report.json"
		--report-format json --) ;;
	report-uffd) pre=("$run" --socket "$socket" --strict --mode refpage --backend uffd
		--report="$w/report.json" --report-format json --) ;;
	shim) pre=("$run" --mode anon --) ;;
	esac
}

# CPU seconds the private refpaged has used (utime + stime), or 0.
daemon_cpu() {
	[ -n "$dpid" ] && [ -r "/proc/$dpid/stat" ] || { echo 0; return; }
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$dpid/stat"
}

# one_run PROG MODE: a line "PROG MODE WALL_S MAXRSS_KIB DIGEST CPU_S
# DAEMON_CPU_S" on raw (CPU: the program's user + system time).
one_run() {
	local o=$w/out d0 d1
	rm -rf "$o" && mkdir "$o"
	[ -z "$user" ] || chown "$user" "$o"
	prog_cmd "$1" "$o"
	mode_pre "$2"
	if [ -n "$user" ] && [[ $2 == report* ]]; then
		touch "$w/report.json" && chown "$user" "$w/report.json"
	fi
	d0=$(daemon_cpu)
	# time(1) runs as us and writes $w/time; setpriv execs into the program,
	# whose rusage it reports.
	if ! /usr/bin/time -f "%e %M %U %S" -o "$w/time" "${as[@]}" "${pre[@]}" "${cmd[@]}" >"$o/stdout" 2>"$w/stderr"; then
		echo "real-programs: $1 under $2 failed:" >&2
		cat "$w/stderr" >&2
		exit 1
	fi
	d1=$(daemon_cpu)
	local digest
	digest=$(cd "$o" && sha256sum -- * | sha256sum | cut -c1-16)
	tail -1 "$w/time" | awk -v p="$1" -v m="$2" -v dg="$digest" -v d0="$d0" -v d1="$d1" \
		'{ print p, m, $1, $2, dg, $3 + $4, d1 - d0 }' >>"$w/raw"
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
for p in "${progs[@]}"; do one_run "$p" anon; done # warm the caches
: >"$w/raw"
for ((i = 0; i < runs; i++)); do
	for p in "${progs[@]}"; do
		for ((k = 0; k < ${#modes[@]}; k++)); do # rotate the order run by run
			one_run "$p" "${modes[(k + i) % ${#modes[@]}]}"
		done
	done
	echo "real-programs: run $((i + 1))/$runs done" >&2
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# max - min of the numbers on stdin
spread() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print hi - lo }'; }

load1=$(cut -d' ' -f1-3 /proc/loadavg)
# Which backend --report (and refpage-uffd) gets for the programs' user:
# a full userfaultfd (CAP_SYS_PTRACE, the sysctl at 1, or /dev/userfaultfd
# opened read-write), or a user-mode-only one.
uid=$("${as[@]}" id -u)
umo_sysctl=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo '?')
if [ "$uid" = 0 ] || [ "$umo_sysctl" = 1 ] || "${as[@]}" test -r /dev/userfaultfd -a -w /dev/userfaultfd; then
	who="uid $uid (vm.unprivileged_userfaultfd=$umo_sysctl, a full userfaultfd)"
else
	who="uid $uid (vm.unprivileged_userfaultfd=$umo_sysctl, only a user-mode-only userfaultfd: refpage-uffd's system calls on untouched buffers would fail)"
fi
who+=": \`refpage\` is refpage-run's default, the file backend, whose faults the kernel serves (refpaged has no work)"
fault_around=$(grep -o 'fault-around [0-9]*' "$w/d.log" 2>/dev/null | head -1 || true)
bad=0
{
	title=$(printf '%s, ' "${modes[@]}")
	echo "# Real programs: ${title%, }"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); \`$cmdline\`; median of $runs run(s) per cell, modes interleaved."
	echo "Run as $who."
	echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); kernel $(uname -r);" \
		"THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo n/a); refpaged ${fault_around:-(external)};" \
		"refpage-run threshold 131072 bytes, pattern 0xAA. Wall time and max RSS from \`/usr/bin/time -f \"%e %M\"\`." \
		"Load average (1/5/15 min) $load0 at the start, $load1 at the end: other work on the machine shows in wall times." \
		"CPU s: the program's user + system time; refpaged's own CPU time during the run is beside it (the pager's work" \
		"runs in the daemon, on another CPU when one is free)."
	echo
	echo "| program | mode | wall s | wall min–max | × anon | noise | CPU s | + refpaged CPU s | max RSS KiB | × anon | output |"
	echo "|---|---|--:|--:|--:|---|--:|--:|--:|--:|---|"
	for p in "${progs[@]}"; do
		ref=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $5; exit }' "$w/raw")
		aw=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $3 }' "$w/raw" | median)
		aspread=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $3 }' "$w/raw" | spread)
		ar=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $4 }' "$w/raw" | median)
		for m in "${modes[@]}"; do
			wall=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $3 }' "$w/raw" | median)
			rss=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $4 }' "$w/raw" | median)
			cpu=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $6 }' "$w/raw" | median)
			dcpu=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $7 }' "$w/raw" | median)
			[ "$m" = refpage-uffd ] || [ "$m" = report-uffd ] || dcpu=- # the file backend: no daemon
			range=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $3 }' "$w/raw" | sort -g |
				awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }')
			# noise: the difference from anon's median is within the larger spread.
			noise=$(awk -v m="$m" -v a="$wall" -v b="$aw" -v s1="$aspread" -v s2="$(awk -v p="$p" -v m="$m" \
				'$1 == p && $2 == m { print $3 }' "$w/raw" | spread)" \
				'BEGIN { d = a - b; if (d < 0) d = -d; s = s1 > s2 ? s1 : s2; print (m != "anon" && d < s) ? "noise" : "" }')
			ndiff=$(awk -v p="$p" -v m="$m" -v r="$ref" '$1 == p && $2 == m && $5 != r' "$w/raw" | wc -l)
			same="identical"
			((ndiff == 0)) || { same="DIFFERS in $ndiff run(s)"; bad=1; }
			if [ -n "$tsv" ]; then
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$m" "$wall" \
					"$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $3 }' "$w/raw" | sort -g | head -1)" \
					"$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $3 }' "$w/raw" | sort -g | tail -1)" \
					"$rss" "$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $4 }' "$w/raw" | sort -g | head -1)" \
					"$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $4 }' "$w/raw" | sort -g | tail -1)" \
					"$cpu" "$dcpu" "$([ "$ndiff" = 0 ] && echo yes || echo no)" >>"$w/table.tsv"
			fi
			printf '| %s | %s | %.3f | %s | %.3f | %s | %.2f | %s | %.0f | %.3f | %s |\n' "$p" "$m" "$wall" "$range" \
				"$(awk -v a="$wall" -v b="$aw" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$noise" "$cpu" "$dcpu" "$rss" \
				"$(awk -v a="$rss" -v b="$ar" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$same"
		done
	done
	echo
	echo "noise: the mode's median wall time differs from anon's by less than the larger of the two"
	echo "min–max spreads (the mode's, anon's): its runs overlap anon's, the × anon beside it is not a"
	echo "measured difference. Never flagged with one run (no spread), nor on the anon rows."
	echo
	if [[ " ${modes[*]} " == *" shim "* ]]; then
		echo "Shim mode: \`refpage-run --mode anon\`: the shim with every large block its own anonymous mmap"
		echo "and no pattern; its cost over anon is the shim's (no heap reuse of large blocks), refpage's"
		echo "over it the pattern's."
		echo
	fi
	if [[ " ${modes[*]} " == *" report"* ]]; then
		echo "Report mode: $(wc -l <"$w/report.json" 2>/dev/null || echo 0) allocation(s) with pages read before"
		echo "written reported over all report runs (\`--report-format json\` lines)."
		echo
	fi
	echo "For reference, the MAP_REFPAGE patch's measurement (Pixel 4, kernel 4.14 with the patch, Scudo"
	echo "with pattern init; \`pdfium_test --pages=1-100\` of the ARMv8 ARM; median of 100 runs):"
	echo
	echo "| PDFium | real time s | × anon | max RSS KiB | × anon |"
	echo "|---|--:|--:|--:|--:|"
	echo "| anon | 2.237081 | 1.000 | 107088 | 1.000 |"
	echo "| memset | 2.252241 | 1.007 | 112180 | 1.048 |"
	echo "| refpage | 2.251220 | 1.006 | 103504 | 0.967 |"
} >"$w/table.md"
mkdir -p "$(dirname "$out")"
cp "$w/table.md" "$out"
if [ -n "$tsv" ]; then
	mkdir -p "$(dirname "$tsv")"
	{
		printf 'program\tmode\twall_med\twall_min\twall_max\trss_med\trss_min\trss_max\tcpu_med\tdaemon_cpu_med\tidentical\n'
		cat "$w/table.tsv"
	} >"$tsv"
fi
cat "$w/table.md"
exit $bad
