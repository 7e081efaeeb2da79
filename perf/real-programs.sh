#!/usr/bin/env bash
# perf/real-programs.sh: unmodified programs that allocate large buffers,
# under four ways of getting (or not getting) pattern-initialised memory:
#   anon     plain glibc, no shim (the baseline)
#   memset   refpage-run --mode memset: each large block memset to 0xAA
#   perturb  GLIBC_TUNABLES=glibc.malloc.perturb=170, no shim: glibc fills
#            every allocation with 0x55 (170 ^ 0xff) and freed memory with 0xAA
#   refpage  refpage-run --mode refpage --strict: refpage blocks of 0xAA from
#            a private refpaged (never a silent fallback to memset), on the
#            backend refpage-run chooses (auto: uffd for root, the file
#            backend for a user with only a user-mode-only userfaultfd)
#   refpage-file  the same with --backend file: librefpage's file backend,
#            whose faults the kernel serves (no daemon); not in the default
#            --modes
#   report   the same with --report --report-format json (docs/report.md):
#            one page per fill, read-before-write pages recorded; not in
#            the default --modes
# Median wall time and max RSS of --runs N runs each (/usr/bin/time -f
# "%e %M"), the modes interleaved run by run; every run's output must be
# byte-identical to the anon runs'. Writes a Markdown table (with the
# MAP_REFPAGE patch's PDFium numbers beside it) to --out.
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
#
# usage: perf/real-programs.sh [--runs N] [--programs LIST] [--quick]
#          [--build DIR] [--daemon PATH] [--run PATH] [--socket PATH]
#          [--out FILE] [--workdir DIR] [--fault-around N] [--modes LIST]
#          [--user USER]
#   --modes   which of anon,memset,perturb,refpage,refpage-file,report
#             (default anon,memset,perturb,refpage; anon always runs: it is
#             the reference)
#   --user    run every program (and refpage-run) as USER (setpriv, no
#             supplementary groups); the private refpaged stays root's
#   --quick   small inputs (CI smoke: tests/preload, --runs 1)
#   --socket  use a running refpaged instead of starting a private one
#   --fault-around N  the private refpaged's largest fill window (its default: 16)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=10 programs=pdftoppm,xz,python3 quick=0 build=$root/build out=$here/results/real-programs.md
daemon= run= socket= workdir= daemon_args=() modes_arg=anon,memset,perturb,refpage user=
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
	memset | perturb | refpage | refpage-file | report) modes+=("$m") ;;
	*) die "unknown mode '$m' (anon, memset, perturb, refpage, refpage-file, report)" ;;
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
	*) die "unknown program '$p' (pdftoppm, xz, python3)" ;;
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
else
	seq 1 1100000 >"$w/xz-in.txt"
	py_n=1500000 pdf_pages=()
fi

# prog_cmd PROG OUTDIR: the command in cmd[], writing into OUTDIR.
prog_cmd() {
	case $1 in
	pdftoppm) cmd=(/usr/bin/pdftoppm -r 150 "${pdf_pages[@]}" "$pdf" "$2/page") ;;
	xz) cmd=(/usr/bin/xz -9 -T2 --block-size=4MiB -c "$w/xz-in.txt") ;;
	python3) cmd=(/usr/bin/python3 "$workload" "$py_n") ;;
	esac
}

mode_pre() {
	case $1 in
	anon) pre=() ;;
	memset) pre=("$run" --socket "$socket" --mode memset --) ;;
	perturb) pre=(env GLIBC_TUNABLES=glibc.malloc.perturb=170) ;;
	refpage) pre=("$run" --socket "$socket" --strict --mode refpage --) ;;
	refpage-file) pre=("$run" --socket "$socket" --strict --mode refpage --backend file --) ;;
	report) pre=("$run" --socket "$socket" --strict --mode refpage --report="$w/report.json"
		--report-format json --) ;;
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
	if [ -n "$user" ] && [ "$2" = report ]; then
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

load1=$(cut -d' ' -f1-3 /proc/loadavg)
# Which backend refpage-run's auto gives the programs' user: uffd with a
# full userfaultfd (CAP_SYS_PTRACE, the sysctl at 1, or /dev/userfaultfd
# opened read-write), else the file backend.
uid=$("${as[@]}" id -u)
umo_sysctl=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo '?')
if [ "$uid" = 0 ] || [ "$umo_sysctl" = 1 ] || "${as[@]}" test -r /dev/userfaultfd -a -w /dev/userfaultfd; then
	auto="uffd"
else
	auto="file"
fi
who="uid $uid (vm.unprivileged_userfaultfd=$umo_sysctl): \`refpage\` (refpage-run's --backend auto) is the $auto backend here"
[ "$auto" = uffd ] || who+=", whose faults the kernel serves: refpaged has no work"
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
	echo "| program | mode | wall s | wall min–max | × anon | CPU s | + refpaged CPU s | max RSS KiB | × anon | output |"
	echo "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"
	for p in "${progs[@]}"; do
		ref=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $5; exit }' "$w/raw")
		aw=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $3 }' "$w/raw" | median)
		ar=$(awk -v p="$p" '$1 == p && $2 == "anon" { print $4 }' "$w/raw" | median)
		for m in "${modes[@]}"; do
			wall=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $3 }' "$w/raw" | median)
			rss=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $4 }' "$w/raw" | median)
			cpu=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $6 }' "$w/raw" | median)
			dcpu=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $7 }' "$w/raw" | median)
			[ "$m" = refpage ] || [ "$m" = report ] || dcpu=- # refpage-file: no daemon
			range=$(awk -v p="$p" -v m="$m" '$1 == p && $2 == m { print $3 }' "$w/raw" | sort -g |
				awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }')
			ndiff=$(awk -v p="$p" -v m="$m" -v r="$ref" '$1 == p && $2 == m && $5 != r' "$w/raw" | wc -l)
			same="identical"
			((ndiff == 0)) || { same="DIFFERS in $ndiff run(s)"; bad=1; }
			printf '| %s | %s | %.3f | %s | %.3f | %.2f | %s | %.0f | %.3f | %s |\n' "$p" "$m" "$wall" "$range" \
				"$(awk -v a="$wall" -v b="$aw" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$cpu" "$dcpu" "$rss" \
				"$(awk -v a="$rss" -v b="$ar" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$same"
		done
	done
	echo
	if [[ " ${modes[*]} " == *" report "* ]]; then
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
cat "$w/table.md"
exit $bad
