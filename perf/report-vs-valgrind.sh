#!/usr/bin/env bash
# perf/report-vs-valgrind.sh: the test programs of tests/preload/report_cases.c
# under refpage-run --report (the default backend, file: pagemap), under
# refpage-run --backend uffd --report (refpaged's read faults) and under
# valgrind memcheck, side by side: what each tool reports for each case, and
# what each run costs in wall time (bash's $EPOCHREALTIME around each run;
# median of --runs N, the four ways interleaved; plain: no tool).
# Writes a Markdown table to --out (docs/report.md quotes it).
#
# usage: perf/report-vs-valgrind.sh [--runs N] [--build DIR] [--out FILE]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=5 build=$root/build out=$here/results/report-vs-valgrind.md
cmdline="perf/report-vs-valgrind.sh $*"
die() { echo "report-vs-valgrind: $*" >&2; exit 2; }
while (($#)); do
	case $1 in
	--runs) runs=${2:?}; shift ;;
	--build) build=${2:?}; shift ;;
	--out) out=${2:?}; shift ;;
	-h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (--help)" ;;
	esac
	shift
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive number"
daemon=$build/daemon/refpaged run=$build/client/refpage-run
cases_bin=$build/tests/preload/rp_preload_report_cases
for f in "$daemon" "$run" "$cases_bin"; do
	[ -x "$f" ] || { echo "SKIP: $f missing (build first)"; exit 77; }
done
command -v valgrind >/dev/null || { echo "SKIP: valgrind missing (scripts/deps.sh installs it)"; exit 77; }

w=$(mktemp -d "${TMPDIR:-/tmp}/report-vs-valgrind.XXXXXX")
dpid=
# shellcheck disable=SC2317 # called from the trap
cleanup() {
	[ -n "$dpid" ] && { kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null; }
	rm -rf "$w"
}
trap cleanup EXIT
"$daemon" --socket "$w/d.sock" >"$w/d.log" 2>&1 &
dpid=$!
for _ in $(seq 200); do [ -S "$w/d.sock" ] && break; sleep 0.05; done
[ -S "$w/d.sock" ] || { cat "$w/d.log"; die "refpaged did not start"; }
"$run" --strict --socket "$w/d.sock" -- true 2>"$w/probe" ||
	{ echo "SKIP: refpages unusable here: $(cat "$w/probe")"; exit 77; }

cases=(fresh realloc fork write middle readwrite clean)
tools=(plain report report-uffd memcheck)

# one CASE TOOL: its wall time appended to $w/CASE-TOOL.t, its findings
# left in $w/CASE-TOOL.out.
one() {
	local c=$1 t=$2 pre=() be=file
	case $t in
	report) rm -f "$w/r.json"
		pre=("$run" --socket "$w/d.sock" --strict --report="$w/r.json" --report-format json --) ;;
	report-uffd) rm -f "$w/r.json" && be=uffd
		pre=("$run" --socket "$w/d.sock" --strict --backend uffd --report="$w/r.json"
			--report-format json --) ;;
	memcheck) pre=(valgrind --tool=memcheck --trace-children=yes --child-silent-after-fork=no) ;;
	esac
	local t0=$EPOCHREALTIME t1
	"${pre[@]}" "$cases_bin" "$c" "$be" >"$w/stdout" 2>"$w/stderr" ||
		{ cat "$w/stderr" >&2; die "$c under $t failed"; }
	t1=$EPOCHREALTIME
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", (b - a) * 1000 }' >>"$w/$c-$t.t"
	case $t in
	report*) touch "$w/r.json"; cp "$w/r.json" "$w/$c-$t.out" ;;
	memcheck) cp "$w/stderr" "$w/$c-$t.out" ;;
	esac
}

for ((i = 0; i < runs; i++)); do
	for c in "${cases[@]}"; do
		for ((k = 0; k < ${#tools[@]}; k++)); do
			one "$c" "${tools[(k + i) % ${#tools[@]}]}"
		done
	done
	echo "report-vs-valgrind: run $((i + 1))/$runs done" >&2
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# What --report said: per JSON line "N page(s) from OFFSET of SIZE B, site FUNCTION, pid P".
report_says() {
	python3 - "$1" <<-'PY'
		import json, sys
		out = []
		for l in open(sys.argv[1]):
		    if not l.strip():
		        continue
		    g = json.loads(l)
		    out.append(f"{g['pages']} page(s) from offset {g['first_offset']} of {g['size']} B, "
		               f"site {(g['function'] or g['site']).split('+')[0]}, pid {g['pid']}")
		print("; ".join(out) or "nothing")
	PY
}

# What memcheck said: its error summary and the kinds of its errors.
memcheck_says() {
	local n kinds
	n=$(grep -o 'ERROR SUMMARY: [0-9]* errors' "$1" | awk '{ s += $3 } END { print s + 0 }')
	kinds=$(grep -E '^==[0-9]+== (Syscall param|Conditional jump|Use of uninitialised|Invalid read)' "$1" |
		sed -E 's/^==[0-9]+== //; s/ \(.*//' | sort | uniq -c | awk '{ $1 = $1 "x"; print }' | paste -sd ';' -)
	echo "$n error(s)${kinds:+: $kinds}"
}

{
	echo "# refpage-run --report beside valgrind memcheck"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); \`$cmdline\`; median wall time of $runs run(s), the four interleaved;"
	echo "$(nproc) CPUs, kernel $(uname -r), $(valgrind --version). Programs: tests/preload/report_cases.c."
	echo
	echo "| case | refpage-run --report (file backend) says | --backend uffd --report says | memcheck says | plain ms | --report ms | uffd --report ms | memcheck ms |"
	echo "|---|---|---|---|--:|--:|--:|--:|"
	for c in "${cases[@]}"; do
		printf '| %s | %s | %s | %s | %.1f | %.1f | %.1f | %.1f |\n' "$c" "$(report_says "$w/$c-report.out")" \
			"$(report_says "$w/$c-report-uffd.out")" "$(memcheck_says "$w/$c-memcheck.out")" \
			"$(median <"$w/$c-plain.t")" "$(median <"$w/$c-report.t")" \
			"$(median <"$w/$c-report-uffd.t")" "$(median <"$w/$c-memcheck.t")"
	done
} >"$w/table.md"
mkdir -p "$(dirname "$out")"
cp "$w/table.md" "$out"
cat "$w/table.md"
