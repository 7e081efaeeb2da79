#!/bin/bash
# ThreadSanitizer: build with clang and -DRP_TSAN=ON into build-tsan/, run the
# unit and integration tests, and fail on a failed test or on any
# ThreadSanitizer report, a test program's or a daemon's.
#
#   scripts/tsan.sh [ctest args...]     (default: -L 'unit|integration')
#
# clang, not gcc: gcc 12's TSan runtime dies ("dup thread with used id") when
# tests/common/load.c's fork child starts threads in a process that had
# others; clang 14's forgets the parent's threads at fork (die_after_fork=0).
#
# The daemon's reports: to symbolize one the runtime looks for
# llvm-symbolizer (stat(2)) and would run it (execve), which the daemon's
# seccomp filter kills it for; a report file (log_path) would be an
# open(O_CREAT), refused too. So TSan reports go unsymbolized to stderr,
# the daemon's into its log, which the integration tests keep
# (RP_ITEST_KEEP); this script collects the reports from the tests' output
# and those logs afterwards and symbolizes them with llvm-symbolizer.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-tsan

if [[ -z ${RP_TSAN_PRIVATE_TMP:-} ]]; then
	bash scripts/deps.sh
	CC=clang cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRP_TSAN=ON >/dev/null
	cmake --build "$dir" -j"$(nproc)"
	# The tests in a /tmp of their own (harness.c keeps the daemons' logs in
	# /tmp/rp-itest-*): what is read afterwards is this run's, whatever else
	# runs tests on the machine, and it goes away with the namespace. A
	# checkout under /tmp is bind-mounted into the new /tmp at its path.
	# shellcheck disable=SC2016 # expanded by the inner bash
	exec env RP_TSAN_PRIVATE_TMP=1 unshare -m --propagation private bash -c '
		set -e
		new=$PWD/build-tsan/tmp
		mkdir -p "$new"
		mount -t tmpfs -o mode=1777 rp-tsan "$new"
		if [[ $PWD == /tmp/* ]]; then
			mkdir -p "$new/${PWD#/tmp/}"
			mount --bind "$PWD" "$new/${PWD#/tmp/}"
		fi
		mount --move "$new" /tmp
		exec bash "$0" "$@"' "$PWD/scripts/tsan.sh" "$@"
fi

(($#)) || set -- -L 'unit|integration'
status=0
(
	cd "$dir"
	# die_after_fork=0: the integration tests fork multi-threaded (load.c).
	# exitcode: 66, the default, made explicit: a process with a report
	# fails its test even where nothing else went wrong.
	export TSAN_OPTIONS="die_after_fork=0 symbolize=0 exitcode=66 ${TSAN_OPTIONS:-}"
	RP_ITEST_KEEP=1 ctest --output-on-failure --timeout 300 "$@"
) || status=$?

# Every report: ctest's log of every test's output, and the daemons' logs.
logs=("$dir/Testing/Temporary/LastTest.log")
while IFS= read -r -d '' f; do
	logs+=("$f")
done < <(find /tmp -maxdepth 2 -path '/tmp/rp-itest-*' -name '*.log' -print0 2>/dev/null)

# The (module+0xoffset) frames of an unsymbolized report: function file:line
# in place of <null> <null>.
declare -A objs=()
symbolize() {
	local line mod off path sym
	while IFS= read -r line; do
		line=${line% (BuildId: *)}
		if [[ $line =~ \<null\>\ \<null\>\ \(([^+\ \)]+)\+(0x[0-9a-f]+)\) ]]; then
			mod=${BASH_REMATCH[1]} off=${BASH_REMATCH[2]}
			if [[ -z ${objs[$mod]+set} ]]; then
				path=$(find "$dir" -type f -name "$mod" -perm -u+x -print -quit 2>/dev/null)
				[[ -n $path ]] ||
					path=$(ldconfig -p | awk -v m="$mod" '$1 == m { print $NF; exit }')
				objs[$mod]=$path
			fi
			path=${objs[$mod]}
			if [[ -n $path ]]; then
				sym=$(llvm-symbolizer-14 --obj="$path" --functions=short "$off" |
					sed '/^$/d' | paste -sd' ')
				line=${line/<null> <null>/$sym}
			fi
		fi
		printf '%s\n' "$line"
	done
}

# Each distinct report (by its SUMMARY line) once, symbolized, with where
# it was seen and how often; the daemons' logs are also in LastTest.log
# whenever a test dumped them.
existing=()
for f in "${logs[@]}"; do [[ -f $f ]] && existing+=("$f"); done
reports=$(cat "${existing[@]}" | grep -c '^WARNING: ThreadSanitizer' || true)
if ((reports)); then
	awk '
		/^==================$/ {
			if (!inr) { inr = 1; block = $0 "\n"; next }
			inr = 0
			key = summary; sub(/ \(BuildId:.*/, "", key)
			if (!(key in seen)) { order[++n] = key; text[key] = block $0 }
			seen[key]++
			if (!((key, FILENAME) in in_file)) where[key] = where[key] "\n    " FILENAME
			in_file[key, FILENAME] = 1
			next
		}
		inr { block = block $0 "\n"; if ($0 ~ /^SUMMARY: ThreadSanitizer/) summary = $0 }
		END {
			for (i = 1; i <= n; i++) {
				k = order[i]
				printf "==== seen %d time(s), in:%s\n%s\n", seen[k], where[k], text[k]
			}
		}' "${existing[@]}" | symbolize
	# the private /tmp goes away with this process: keep those logs
	rm -rf "$dir/tsan-logs"
	mkdir -p "$dir/tsan-logs"
	for f in "${existing[@]}"; do
		[[ $f == /tmp/* ]] && grep -q '^WARNING: ThreadSanitizer' "$f" &&
			cp "$f" "$dir/tsan-logs/$(basename "$(dirname "$f")").log"
	done
	echo "tsan: $reports report(s); the daemons' logs that have some: $dir/tsan-logs/" >&2
	exit 1
fi
if ((status)); then
	echo "tsan: ctest failed (exit $status)" >&2
	exit "$status"
fi
echo "tsan: no ThreadSanitizer report"
