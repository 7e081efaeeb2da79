#!/bin/bash
# Build-only matrix: every target (tests, the fuzz targets where clang builds
# them) with the project's -Werror, in each of
#   {gcc, clang} x {Debug, Release, RelWithDebInfo, MinSizeRel}
# plus gcc Release without the restart wing (-DRP_RESTART_WING=OFF), whose
# tests also run (all but the slow ones; the wing's own are not built
# there): the core must run without the wing. clang RelWithDebInfo also has
# -DRP_FUZZ=ON: the same flags as scripts/fuzz.sh's build-fuzz/.
# Each configuration builds in its own build-<name>/ (next to build/, at the
# same depth: with ccache's base_dir the objects they share hit the cache).
# Build only, unless --unit.
#
#   scripts/build-matrix.sh [--list] [--unit] [NAME...]   NAME: gcc-Debug, clang-Release, ...
#
# --unit also runs the unit tests (ctest -L unit, a few seconds) in each.
#
# Every configuration is built even after one fails; the failed ones are
# listed at the end and the exit status is 1. Set CMAKE_C_COMPILER_LAUNCHER=ccache
# (.ci/run does) to build through ccache.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A flags=()
names=()
for cc in gcc clang; do
	for bt in Debug Release RelWithDebInfo MinSizeRel; do
		names+=("$cc-$bt")
		flags[$cc-$bt]="-DCMAKE_BUILD_TYPE=$bt"
	done
done
flags[clang-RelWithDebInfo]+=" -DRP_FUZZ=ON"
names+=(gcc-Release-norestart)
flags[gcc-Release-norestart]="-DCMAKE_BUILD_TYPE=Release -DRP_RESTART_WING=OFF"
declare -A tests=([gcc-Release-norestart]="systemd_nspawn|tenant")

if [[ ${1:-} == --list ]]; then
	for n in "${names[@]}"; do echo "$n: CC=${n%%-*} ${flags[$n]}"; done
	exit 0
fi
unit=0
if [[ ${1:-} == --unit ]]; then
	unit=1
	shift
fi
if (($#)); then
	for n in "$@"; do
		[[ -n ${flags[$n]:-} ]] || { echo "build-matrix: no configuration $n (--list)" >&2; exit 2; }
	done
	names=("$@")
fi

failed=()
for n in "${names[@]}"; do
	dir=build-$n log=build-$n/build.log
	start=$SECONDS
	mkdir -p "$dir"
	# shellcheck disable=SC2086 # flags are words
	if CC=${n%%-*} cmake -S . -B "$dir" -DCMAKE_INSTALL_PREFIX=/usr ${flags[$n]} >"$log" 2>&1 &&
		cmake --build "$dir" -j"$(nproc)" >>"$log" 2>&1 &&
		{ ((!unit)) || (cd "$dir" && ctest -L unit --output-on-failure >>build.log 2>&1); } &&
		{ [[ -z ${tests[$n]:-} ]] ||
			(cd "$dir" && ctest -j"$(nproc)" -E "${tests[$n]}" --output-on-failure >>build.log 2>&1); }; then
		printf 'build-matrix: %-24s ok      %4d s\n' "$n" $((SECONDS - start))
	else
		printf 'build-matrix: %-24s FAILED  %4d s (%s)\n' "$n" $((SECONDS - start)) "$log"
		grep -E -A3 'error|warning' "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
		failed+=("$n")
	fi
done
if ((${#failed[@]})); then
	echo "build-matrix: failed: ${failed[*]}" >&2
	exit 1
fi
echo "build-matrix: ${#names[@]} configurations built"
