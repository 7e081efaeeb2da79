#!/bin/bash
# The .deb on a real systemd: systemd 252 as PID 1 of a systemd-nspawn
# container booted from a Debian bookworm minbase root.
#
#   test_nspawn.sh BUILD_DIR DEMO HOLD_CLIENT FORK_CLIENT LOAD_CLIENT
#
# 1. cpack -G DEB in BUILD_DIR makes the packages (into a scratch dir):
#    refpaged, librefpage0, librefpage-dev; and the same source, built
#    again with -DRP_VERSION_SUFFIX=+rebuild1 (the product only, through
#    $CMAKE_C_COMPILER_LAUNCHER if set), makes them at a higher version,
#    for the upgrade.
# 2. The root is debootstrapped once and cached outside the repo, in
#    $RP_NSPAWN_CACHE (default /var/cache/refpaged-nspawn)/bookworm-KEY/root,
#    KEY a hash of the suite, mirror, architecture and package list (systemd,
#    systemd-sysv, dbus, procps and the package's Depends:). The mirror is
#    the one apt on this machine uses ($RP_DEBIAN_MIRROR overrides it).
#    Delete the directory to rebuild it.
# 3. Each run works on an overlay of that root (the cache stays pristine):
#    the packages are installed there offline (dpkg -i in a container without
#    systemd: postinst only enables the socket), with an ordinary user
#    rpuser, the clients DEMO, HOLD_CLIENT, FORK_CLIENT and LOAD_CLIENT (built here, same
#    glibc; not part of the package), selftest.sh, and rp-selftest.service.
# 4. It boots: systemd-nspawn -b; rp-selftest.service runs selftest.sh after
#    multi-user.target, which checks socket activation, READY=1, an
#    ordinary user's client with fork, STATUS=, journal priorities, restart
#    after kill -9 and after a watchdog timeout, ten kill -9s, a restart and
#    a reload under a faulting load that must not notice them, a stop that
#    releases it, the online security score,
#    remove, purge, install on a running system, a package upgrade to the
#    higher version under a faulting load (the daemon replaced in place),
#    a reinstall, purge; then powers off.
# 5. Here: the online score must match the offline one within 0.1; the
#    package size and the times measured inside are printed.
# Exit 0: pass, 1: fail, 77: skipped (says why).
set -u
build=$(realpath "$1") demo=$(realpath "$2") hold=$(realpath "$3") forkc=$(realpath "$4")
loadc=$(realpath "$5")
here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
base_pkgs=(systemd systemd-sysv dbus procps)
cache=${RP_NSPAWN_CACHE:-/var/cache/refpaged-nspawn}

skip() {
	echo "SKIP: $*"
	exit 77
}
fail() {
	echo "FAIL: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, overlay mounts, systemd-nspawn)"
[ -z "${RP_SANITIZER_BUILD:-}" ] || skip "sanitizer build: its binaries need the sanitizer runtimes, which the container lacks"
for t in systemd-nspawn debootstrap cpack dpkg-deb dpkg-shlibdeps; do
	command -v $t > /dev/null || skip "no $t (packages systemd-container debootstrap dpkg-dev cmake)"
done
# Mounts and the container live in a mount namespace of their own: nothing
# is left mounted, whatever happens to this script.
if [ -z "${RP_NSPAWN_UNSHARED:-}" ]; then
	RP_NSPAWN_UNSHARED=1 exec unshare --mount --propagation private bash "$0" "$@"
fi

work=$(mktemp -d /var/tmp/refpaged-nspawn-run.XXXXXX)
# The container's logs stay in the build tree for a look afterwards.
keep=$build/systemd-nspawn-out
trap 'rm -rf "$keep"; cp -r "$work/out" "$keep"; umount -R "$work/root" 2> /dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/pkg" "$work/out" "$work/upper" "$work/ovlwork" "$work/root"

# --- 1. the packages, and a higher version of them -----------------------
mkdir -p "$work/pkg/v1" "$work/pkg/v2"
(cd "$build" && cpack -G DEB -B "$work/pkg/v1") > "$work/cpack.log" 2>&1 ||
	{ cat "$work/cpack.log"; fail "cpack -G DEB"; }
deb=$(ls "$work"/pkg/v1/refpaged_*.deb 2> /dev/null | head -n 1)
[ -n "$deb" ] || fail "cpack made no refpaged_*.deb"
cache_var() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
t=$(date +%s)
{
	cmake -S "$(cache_var refpaged_SOURCE_DIR)" -B "$work/build-v2" -DBUILD_TESTING=OFF \
		-DCMAKE_BUILD_TYPE="$(cache_var CMAKE_BUILD_TYPE)" \
		-DCMAKE_INSTALL_PREFIX="$(cache_var CMAKE_INSTALL_PREFIX)" \
		-DCMAKE_C_COMPILER="$(cache_var CMAKE_C_COMPILER)" -DRP_VERSION_SUFFIX=+rebuild1 &&
		cmake --build "$work/build-v2" -j "$(nproc)" &&
		(cd "$work/build-v2" && cpack -G DEB -B "$work/pkg/v2")
} > "$work/build-v2.log" 2>&1 || { tail -n 40 "$work/build-v2.log"; fail "the higher version's build"; }
rm -rf "$work/pkg"/v*/_CPack_Packages
echo "packages: $(cd "$work/pkg" && echo v1/*.deb v2/*.deb) (v2 built in $(($(date +%s) - t)) s)"
for d in "$work"/pkg/v1/*.deb; do
	echo "package: $(basename "$d"), $(stat -c %s "$d") bytes," \
		"Installed-Size $(dpkg-deb -f "$d" Installed-Size) KiB"
	echo "  Depends: $(dpkg-deb -f "$d" Depends)"
	dpkg-deb -c "$d" | awk '{ print "  " $3, $6, $7, $8 }'
done

# --- 2. the cached root --------------------------------------------------
mirror() {
	if [ -n "${RP_DEBIAN_MIRROR:-}" ]; then
		echo "$RP_DEBIAN_MIRROR"
		return
	fi
	# deb822 sources: the URIs of the stanza that has the suite itself.
	awk -v s="$suite" '
		/^URIs:/ { uri = $2 }
		/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) found = uri }
		/^$/ { uri = "" }
		END { if (found) print found }' /etc/apt/sources.list.d/*.sources 2> /dev/null |
		head -n 1 | grep . && return
	awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2> /dev/null | head -n 1
}
mirror=$(mirror)
[ -n "$mirror" ] || skip "no Debian mirror in the apt sources (set RP_DEBIAN_MIRROR)"
# The packages' Depends:, first alternatives, without versions, but for
# the packages themselves.
ours=$(for d in "$work"/pkg/v1/*.deb; do dpkg-deb -f "$d" Package; done)
deps=$(for d in "$work"/pkg/v1/*.deb; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' |
	sed -E 's/\|.*//; s/\(.*\)//; s/[[:space:]]//g' | grep . | grep -vxF "$ours")
pkgs=$(printf '%s\n' "${base_pkgs[@]}" $deps | sort -u | paste -sd, -)
arch=$(dpkg --print-architecture)
key=$(printf '%s\n' "$suite" "$mirror" "$arch" minbase "$pkgs" | sha256sum | cut -c1-12)
root=$cache/$suite-$key/root
mkdir -p "$cache"
(
	flock 9
	if [ ! -e "$root.complete" ]; then
		echo "building $root: debootstrap --variant=minbase --include=$pkgs $suite $mirror"
		rm -rf "$root" "$root.tmp"
		mkdir -p "$(dirname "$root")"
		t=$(date +%s)
		if ! debootstrap --variant=minbase --include="$pkgs" "$suite" "$root.tmp" "$mirror" \
			> "$cache/$suite-$key/debootstrap.log" 2>&1; then
			tail -n 20 "$cache/$suite-$key/debootstrap.log"
			rm -rf "$root.tmp"
			exit 3
		fi
		mv "$root.tmp" "$root"
		printf '%s\n' "$suite $mirror $arch minbase" "$pkgs" > "$root.complete"
		echo "built in $(($(date +%s) - t)) s, $(du -sh "$root" | cut -f1)"
		# One root at a time: the roots of other package lists go.
		for old in "$cache/$suite"-*; do
			[ "$old" = "$(dirname "$root")" ] || rm -rf "$old"
		done
	fi
) 9> "$cache/lock"
case $? in
0) ;;
3) skip "debootstrap of $suite from $mirror failed (no network?); log in $cache/$suite-$key/" ;;
*) fail "cannot prepare $root" ;;
esac
echo "root: $root ($pkgs)"

# --- 3. this run's copy: an overlay, the package installed offline -------
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/ovlwork" "$work/root" ||
	fail "cannot mount an overlay on $root"
r=$work/root
mkdir -p "$r/rp-test/bin"
cp -r "$work/pkg/v1" "$work/pkg/v2" "$r/rp-test/"
cp "$demo" "$r/rp-test/bin/refpage-demo"
cp "$hold" "$r/rp-test/bin/hold_client"
cp "$forkc" "$r/rp-test/bin/fork_client"
cp "$loadc" "$r/rp-test/bin/load_client"
cp "$here/selftest.sh" "$r/rp-test/"
chmod -R a+rX "$r/rp-test"
cat > "$r/etc/systemd/system/rp-selftest.service" << 'EOF'
[Unit]
Description=refpaged package test (tests/systemd/selftest.sh)
After=multi-user.target

[Service]
Type=exec
ExecStart=/rp-test/selftest.sh
ExecStopPost=/bin/systemctl poweroff --no-block
RuntimeMaxSec=600
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
nspawn=(systemd-nspawn -q --register=no --keep-unit -D "$r")
"${nspawn[@]}" --console=pipe sh -c "dpkg -i /rp-test/v1/*.deb &&
	useradd --create-home rpuser && systemctl enable rp-selftest.service" \
	> "$work/out/offline-install.log" 2>&1 ||
	{ cat "$work/out/offline-install.log"; fail "offline install (dpkg -i in a container without systemd)"; }
[ -L "$r/etc/systemd/system/sockets.target.wants/refpaged.socket" ] ||
	fail "offline install: refpaged.socket not enabled"
grep -q "^refpaged:" "$r/etc/passwd" || fail "offline install: no refpaged user"
echo "PASS: offline install (dpkg -i without systemd running): user made, socket enabled"

# --- 4. boot -------------------------------------------------------------
date +%s.%N > "$work/out/t0"
timeout -k 10 660 "${nspawn[@]}" -b --console=read-only --bind="$work/out:/out" \
	> "$work/out/console.log" 2>&1
rc=$?
echo "container exited with status $rc after $(awk -v t0="$(cat "$work/out/t0")" -v t1="$(date +%s.%N)" \
	'BEGIN { printf "%.1f", t1 - t0 }') s"
res=$work/out/result
if [ ! -s "$res" ] || ! grep -q '^DONE$' "$res"; then
	echo "--- result"
	cat "$res" 2> /dev/null
	echo "--- console"
	tail -n 60 "$work/out/console.log"
	fail "the selftest did not finish (container status $rc)"
fi
grep -E '^(PASS|FAIL|SKIP|NOTE)' "$res"

# --- 5. the score as systemd-analyze sees it offline, here ---------------
dpkg-deb -x "$deb" "$work/x"
unit=$(find "$work/x" -name refpaged.service | head -n 1)
offline=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1 |
	sed -nE 's/.*Overall exposure level for [^:]+: ([0-9]+(\.[0-9]+)?) .*/\1/p')
online=$(sed -n 's/^METRIC security_online //p' "$res")
bad=0
if [ -n "$offline" ] && [ -n "$online" ] &&
	awk -v a="$offline" -v b="$online" 'BEGIN { d = a - b; exit !(d <= 0.1 && d >= -0.1) }'; then
	echo "PASS: exposure inside $online, offline on the host $offline"
else
	echo "FAIL: exposure inside '${online}', offline on the host '${offline}'"
	bad=1
fi

metric() { sed -n "s/^METRIC $1 //p" "$res"; }
echo
echo "package sizes:                  $(for d in "$work"/pkg/v1/*.deb; do printf '%s %s bytes; ' "$(basename "$d")" "$(stat -c %s "$d")"; done)"
echo "boot to first fault:            $(metric boot_to_first_fault_s) s (systemd-nspawn start to the first client's first fault served)"
echo "  of which in the container:     $(metric pid1_to_first_fault_s) s (its systemd, PID 1, started to that fault)"
echo "service start to READY=1:       $(metric service_start_to_ready_ms) ms"
echo "kill -9 to active (running):    $(metric restart_kill_to_active_s) s (RestartSec=$(metric restart_sec))"
echo "kill -9 to next client served:  $(metric restart_kill_to_client_served_s) s"
echo "10 kill -9s under load:         worst kill to active again $(metric kill_worst_down_s) s, slowest first touch $(metric kill_worst_fault_ms) ms (parent/fork child)"
echo "reload (in-place re-exec):      $(metric reload_s) s from systemctl reload to the new MainPID seen; clients paused $(metric reload_pause_ms) ms (daemon's log)"
echo "package upgrade under load:     apt-get install of the higher version $(metric upgrade_s) s; clients paused $(metric upgrade_pause_ms) ms (daemon's log); slowest first touch from apt-get's start to the check after it $(metric upgrade_worst_fault_ms) ms (parent/fork child), in 10 s without an upgrade $(metric upgrade_control_fault_ms) ms"
echo "container: $(cat "$work/out/analyze-time.txt" 2> /dev/null | head -n 1)"

if grep -q '^FAIL' "$res" || [ $bad = 1 ]; then
	for f in status.txt demo.log checks.log journal.txt apt-remove.log apt-purge.log apt-install.log \
		apt-upgrade.log status-upgraded.txt apt-refused.log journal-refused.txt apt-reinstall.log \
		apt-purge2.log; do
		[ -f "$work/out/$f" ] && { echo "--- $f"; tail -n 40 "$work/out/$f"; }
	done
	fail "$(grep -c '^FAIL' "$res") checks failed inside the container"
fi
echo "PASS"
