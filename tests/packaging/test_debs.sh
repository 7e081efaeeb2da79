#!/bin/bash
# The three Debian packages of `cpack -G DEB` (packaging/CMakeLists.txt).
#
#   test_debs.sh cpack BUILD_DIR DEB_DIR VERSION PACKAGE...
#   test_debs.sh lintian DEB_DIR
#   test_debs.sh consumer DEB_DIR LIB_PACKAGE DEV_PACKAGE VERSION SOURCE_DIR
#
# cpack     makes the packages of BUILD_DIR into DEB_DIR (emptied first);
#           there must be exactly PACKAGE_VERSION_ARCH.deb for each PACKAGE.
#           Prints each one's size, control fields and files.
# lintian   runs lintian (its default profile) over every .deb in DEB_DIR
#           and fails on any error (E:) or warning (W:) it prints.
# consumer  unpacks only LIB_PACKAGE and DEV_PACKAGE into an empty root and
#           builds SOURCE_DIR's consumer.c against that root alone: with
#           `pkg-config --cflags --libs refpage` (shared), with
#           `pkg-config --static` (librefpage.a) and as a CMake project with
#           find_package(refpage VERSION EXACT); each program runs, its
#           shared librefpage loaded from the root.
# Exit 0: pass, 1: fail, 77: skipped (says why).
set -u

skip() {
	echo "SKIP: $*"
	exit 77
}
fail() {
	echo "FAIL: $*"
	exit 1
}
need() {
	for t in "$@"; do
		command -v "$t" > /dev/null || skip "no $t (scripts/deps.sh installs it)"
	done
}
# A sanitizer build's library needs the sanitizer runtimes: its packages
# are not the ones that ship, and a plain program cannot link it.
[ -z "${RP_SANITIZER_BUILD:-}" ] || skip "sanitizer build: its packages are not the ones that ship"

mode=$1
shift
case $mode in
cpack)
	need cpack dpkg-deb dpkg-shlibdeps
	build=$1 debs=$2 version=$3
	shift 3
	rm -rf "$debs"
	mkdir -p "$debs"
	(cd "$build" && cpack -G DEB -B "$debs") > "$debs/cpack.log" 2>&1 ||
		{ cat "$debs/cpack.log"; fail "cpack -G DEB"; }
	arch=$(dpkg --print-architecture)
	want=$(for p in "$@"; do echo "${p}_${version}_$arch.deb"; done | sort | paste -sd' ')
	got=$(find "$debs" -maxdepth 1 -name '*.deb' -printf '%f\n' | sort | paste -sd' ')
	[ "$got" = "$want" ] || fail "cpack made [$got], expected [$want]"
	for deb in $want; do
		echo "--- $deb: $(stat -c %s "$debs/$deb") bytes"
		dpkg-deb -f "$debs/$deb" Package Version Architecture Section Depends
		dpkg-deb -c "$debs/$deb" | awk '{ print "  " $1, $6, $7, $8 }'
	done
	echo "PASS: $want"
	;;
lintian)
	need lintian
	debs=$1
	ls "$debs"/*.deb > /dev/null 2>&1 || skip "no packages in $debs (the cpack test did not make them)"
	# lintian says on stderr that it runs as root: not a finding.
	out=$(lintian "$debs"/*.deb 2> "$debs/lintian.stderr")
	echo "lintian exit status $?"
	[ -n "$out" ] && echo "$out"
	grep -v 'running with root privileges' "$debs/lintian.stderr"
	bad=$(grep -cE '^[EW]: ' <<< "$out")
	[ "$bad" = 0 ] || fail "lintian: $bad errors and warnings"
	echo "PASS: lintian, no error and no warning in $(find "$debs" -maxdepth 1 -name '*.deb' | wc -l) packages"
	;;
consumer)
	need dpkg-deb pkg-config cmake
	debs=$1 lib=$2 dev=$3 version=$4 src=$5
	arch=$(dpkg --print-architecture)
	for p in "$lib" "$dev"; do
		[ -f "$debs/${p}_${version}_$arch.deb" ] ||
			skip "no ${p}_${version}_$arch.deb in $debs (the cpack test did not make it)"
	done
	work=$(mktemp -d /tmp/rp-consumer.XXXXXX)
	trap 'rm -rf "$work"' EXIT
	root=$work/root
	for p in "$lib" "$dev"; do
		dpkg-deb -x "$debs/${p}_${version}_$arch.deb" "$root" || fail "dpkg-deb -x $p"
	done
	pc=$(find "$root" -name refpage.pc)
	[ -n "$pc" ] || fail "no refpage.pc in $dev"
	libdir=$(dirname "$(dirname "$pc")")
	# The root's pkg-config directory and nothing else; its paths are
	# prefixed with the root.
	export PKG_CONFIG_LIBDIR=$libdir/pkgconfig PKG_CONFIG_SYSROOT_DIR=$root
	cc=${CC:-cc}
	flags=(-std=c11 -Wall -Wextra -Werror)
	sock=$work/no-daemon.sock

	# The program runs, and its librefpage.so.0 is the root's.
	run() {
		local name=$1 prog=$2 so
		so=$(LD_LIBRARY_PATH=$libdir ldd "$prog" 2> /dev/null | awk '$1 == "librefpage.so.0" { print $3 }')
		case $so in
		"$libdir"/*) ;;
		"") [ "$name" = static ] || fail "$name: $prog does not load librefpage.so.0" ;;
		*) fail "$name: $prog loads $so, not the packaged library" ;;
		esac
		out=$(LD_LIBRARY_PATH=$libdir "$prog" "$sock") || fail "$name: $prog $sock"
		echo "PASS: $name: $out"
	}

	out=$(pkg-config --cflags refpage) || fail "pkg-config --cflags refpage"
	read -ra cflags <<< "$out"
	out=$(pkg-config --libs refpage) || fail "pkg-config --libs refpage"
	read -ra libs <<< "$out"
	echo "pkg-config: ${cflags[*]} ${libs[*]}"
	# The header that compiles must be the packaged one.
	hdr=$($cc "${flags[@]}" "${cflags[@]}" -M "$src/consumer.c" | tr -s ' \\\n' '\n' | grep 'refpage\.h$')
	[ "$hdr" = "$root/usr/include/refpage.h" ] || fail "consumer.c includes '$hdr', not the packaged refpage.h"
	$cc "${flags[@]}" "${cflags[@]}" -o "$work/shared" "$src/consumer.c" "${libs[@]}" ||
		fail "build with pkg-config"
	run pkg-config "$work/shared"

	out=$(pkg-config --static --libs refpage) || fail "pkg-config --static --libs refpage"
	read -ra libs <<< "$out"
	$cc "${flags[@]}" -static "${cflags[@]}" -o "$work/static" "$src/consumer.c" "${libs[@]}" ||
		fail "build with pkg-config --static (librefpage.a)"
	run static "$work/static"

	cmake -S "$src" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$root/usr" -DRP_VERSION="$version" \
		> "$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; fail "cmake: find_package(refpage $version EXACT)"; }
	dir=$(sed -n 's/^refpage_DIR:PATH=//p' "$work/cmake/CMakeCache.txt")
	[ "$dir" = "$libdir/cmake/refpage" ] || fail "find_package(refpage) found '$dir', not the packaged one"
	cmake --build "$work/cmake" > "$work/build.log" 2>&1 || { cat "$work/build.log"; fail "cmake --build"; }
	run find_package "$work/cmake/consumer"
	echo "PASS"
	;;
*)
	fail "unknown mode $mode"
	;;
esac
