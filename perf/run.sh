#!/usr/bin/env bash
# perf/run.sh: build if needed, start private refpaged daemons on temporary
# sockets, run refpage-bench over the matrix, and write
#   RESULTS/bench.json  bench.md  bench.txt   (and PNG plots if gnuplot is there)
#   RESULTS/tmp/        TSV, plot data and latency CDFs (not committed)
# RESULTS is perf/results, or perf/results/tmp/quick for --quick.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${BUILD_DIR:-$root/build}
out=""
quick=0
pin=""
user=""
halt_poll=""
daemon_args=()
daemon_args_given=0
extra=()

usage() {
	cat <<EOF
usage: perf/run.sh [options] [-- refpage-bench options]
  --quick              smoke-sized run (16 MiB, 3 reps, seq-write, seq-read,
                       rand-write-10, many-small x 100, 1 and 2 threads); results
                       go to perf/results/tmp/quick unless --out is given
  --daemon-args "ARGS" start one more refpaged with ARGS and measure it as its own
                       mode, labelled from ARGS ("--fault-around 1" -> refpaged-fa1);
                       repeatable. Default: two daemons, "" and "--fault-around 1"
  --pin same|split     same: workers, uffd handler and daemons all on CPU 0;
                       split: handler and daemons on CPU 0, workers on the others
  --out DIR            results directory (default perf/results)
  --user USER          run refpage-bench as USER (setpriv, no groups); the
                       daemons stay root's. As an ordinary user the refpaged
                       modes get a user-mode-only userfaultfd (refpage-file
                       needs none)
  --build DIR          build tree (default: \$BUILD_DIR or ./build; configured
                       RelWithDebInfo if it does not exist yet)
  --guest-halt-poll NS in a KVM guest with cpuidle-haltpoll: let an idle vCPU
                       poll NS nanoseconds before it halts, for this run only
                       (/sys/module/haltpoll/parameters/guest_halt_poll_ns,
                       put back on exit; needs root). A wake-up of a halted
                       vCPU goes through the hypervisor: a userfaultfd round
                       trip wakes two threads, so this shows what of its cost
                       is the machine's (docs/performance.md, "The machine")
EOF
}

while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=1 ;;
	--daemon-args) daemon_args+=("${2?--daemon-args needs a value}"); daemon_args_given=1; shift ;;
	--daemon-args=*) daemon_args+=("${1#*=}"); daemon_args_given=1 ;;
	--pin) pin=${2?--pin needs same or split}; shift ;;
	--out) out=${2?--out needs a directory}; shift ;;
	--build) build=${2?--build needs a directory}; shift ;;
	--user) user=${2?--user needs a user}; shift ;;
	--guest-halt-poll) halt_poll=${2?--guest-halt-poll needs nanoseconds}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; extra=("$@"); break ;;
	*) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
[ $daemon_args_given = 1 ] || daemon_args=("" "--fault-around 1")
if [ -z "$out" ]; then
	if [ $quick = 1 ]; then out=$here/results/tmp/quick; else out=$here/results; fi
fi
mkdir -p "$out/tmp/latency"
rm -f "$out"/tmp/latency/*.cdf

# --- build -------------------------------------------------------------------
if [ ! -f "$build/CMakeCache.txt" ]; then
	cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
btype=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
case $btype in
Release | RelWithDebInfo) ;;
*) echo "run.sh: warning: $build is a '$btype' build; timings want RelWithDebInfo or Release" >&2 ;;
esac
if grep -q '^RP_[AUT]SAN:BOOL=ON' "$build/CMakeCache.txt"; then
	echo "run.sh: warning: $build has sanitizers on; timings are not representative" >&2
fi
cmake --build "$build" -j"$(nproc)" --target refpaged refpage-bench >/dev/null
bench=$build/perf/refpage-bench
daemon=$build/daemon/refpaged

# --- CPU placement -----------------------------------------------------------
ncpu=$(nproc)
srv_prefix=()
pin_args=()
case $pin in
"") ;;
same) srv_prefix=(taskset -c 0); pin_args=(--cpus 0 --handler-cpu 0) ;;
split)
	[ "$ncpu" -ge 2 ] || { echo "run.sh: --pin split needs 2 CPUs" >&2; exit 2; }
	srv_prefix=(taskset -c 0)
	pin_args=(--cpus "$(seq -s, 1 $((ncpu - 1)))" --handler-cpu 0) ;;
*) echo "run.sh: --pin: same or split" >&2; exit 2 ;;
esac

# --- the guest's idle polling --------------------------------------------------
hp_file=/sys/module/haltpoll/parameters/guest_halt_poll_ns
hp_old=""
if [ -n "$halt_poll" ]; then
	[[ $halt_poll =~ ^[0-9]+$ ]] || { echo "run.sh: --guest-halt-poll wants nanoseconds" >&2; exit 2; }
	[ -w "$hp_file" ] || { echo "run.sh: --guest-halt-poll: no writable $hp_file (not a KVM guest with cpuidle-haltpoll, or not root)" >&2; exit 2; }
	hp_old=$(cat "$hp_file")
fi

# --- daemons -----------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/refpage-bench.XXXXXX")
chmod 755 "$tmp" # the sockets, for --user
pids=()
# shellcheck disable=SC2317 # called from the trap
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[ -z "$hp_old" ] || echo "$hp_old" >"$hp_file"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -n "$halt_poll" ]; then
	echo "$halt_poll" >"$hp_file"
	echo "run.sh: guest_halt_poll_ns $halt_poll for this run (was $hp_old)" >&2
fi

# "--fault-around 1 --workers 2" -> refpaged-fa1-w2; the fault loop's
# switches: "--batch 1 --drain off" -> refpaged-batch1-drain-off
label_for() {
	local -a a
	read -r -a a <<<"$1"
	local l=refpaged i=0
	while [ $i -lt ${#a[@]} ]; do
		local k=${a[$i]} v=${a[$((i + 1))]:-}
		case $k in
		--fault-around=* | --workers=* | --batch=* | --drain=* | --coalesce=* | --dontwake=*)
			v=${k#*=}; k=${k%%=*}; i=$((i - 1)) ;;
		esac
		case $k in
		--fault-around) l+="-fa$v"; i=$((i + 2)) ;;
		--workers) l+="-w$v"; i=$((i + 2)) ;;
		--batch) l+="-batch$v"; i=$((i + 2)) ;;
		--drain | --coalesce | --dontwake) l+="-${k#--}-$v"; i=$((i + 2)) ;;
		*) l+="-$(printf '%s' "$k" | tr -cd 'A-Za-z0-9')"; i=$((i + 1)) ;;
		esac
	done
	printf '%s\n' "$l"
}

# shellcheck source=../scripts/private-daemon.sh
. "$root/scripts/private-daemon.sh"
sock_args=()
for i in "${!daemon_args[@]}"; do
	args=${daemon_args[$i]}
	sock=$tmp/d$i.sock
	# shellcheck disable=SC2086 # ARGS are words on purpose
	"${srv_prefix[@]}" "$daemon" --socket "$sock" $args >"$tmp/d$i.log" 2>&1 &
	pid=$!
	pids+=("$pid")
	daemon_wait "$sock" "$pid" "$tmp/d$i.log" "run.sh: refpaged $args did not come up:" >&2
	sock_args+=(--socket "$sock" --label "$(label_for "$args")" --daemon-pid "$pid")
done

# --- the run -----------------------------------------------------------------
if [ $quick = 1 ]; then
	size=(--mib 16 --reps 3 --lat-reps 1 --small-count 100 --threads "1,2"
		--workloads "seq-write,seq-read,rand-write-10,many-small")
else
	size=(--mib 256 --reps 7 --lat-reps 3 --threads "1,2,nproc")
fi
# --user: the bench writes into a directory of the user's, copied out after.
as=() bout=$out
if [ -n "$user" ]; then
	id "$user" >/dev/null || exit 2
	as=(setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups)
	bout=$tmp/out
	mkdir -p "$bout/tmp/latency"
	chown -R "$user:$(id -gn "$user")" "$bout"
fi
status=0
"${as[@]}" "$bench" "${sock_args[@]}" "${size[@]}" "${pin_args[@]}" \
	--json "$bout/bench.json" --markdown "$bout/bench.md" --tsv "$bout/tmp/bench.tsv" \
	--latency-dir "$bout/tmp/latency" "${extra[@]}" | tee "$out/bench.txt" || status=$?
if [ "$bout" != "$out" ]; then
	cp "$bout"/bench.json "$bout"/bench.md "$out"/ 2>/dev/null || status=1
	cp -r "$bout"/tmp/. "$out"/tmp/
fi
# How idle vCPUs waited during the run (it moves every uffd round trip).
if [ -r "$hp_file" ]; then
	hp_note="guest_halt_poll_ns $(cat "$hp_file") during the run${halt_poll:+ (--guest-halt-poll)}"
	echo "$hp_note" | tee -a "$out/bench.txt"
	printf '\n%s\n' "$hp_note" >>"$out/bench.md"
fi

# --- plots -------------------------------------------------------------------
if ! command -v gnuplot >/dev/null; then
	echo "run.sh: gnuplot is not installed (Debian: apt-get install gnuplot-nox): no plots"
	exit $status
fi
"$here/plot.sh" "$out" || echo "run.sh: plotting failed" >&2
echo "results in $out"
exit $status
