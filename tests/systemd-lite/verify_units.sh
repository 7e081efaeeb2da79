#!/bin/bash
# systemd-analyze verify on the units, strictly: systemd only warns about an
# unknown key or a value it cannot parse (and ignores the line), so any
# message about our files fails the test, not just the exit status.
#
#   verify_units.sh SERVICE SOCKET SYSUSERS
#
# SERVICE's ExecStart= must name an existing binary (CMake configures a
# copy pointing into the build tree). Messages about other units (the
# host's) are shown but do not count.
set -u
service=$1 socket=$2 sysusers=$3

command -v systemd-analyze > /dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }
out=$(systemd-analyze verify --man=no --recursive-errors=no "$service" "$socket" 2>&1)
rc=$?
[ -n "$out" ] && echo "$out"
if [ $rc != 0 ] || grep -qE "refpaged\.(service|socket)" <<< "$out"; then
	echo "FAIL: systemd-analyze verify (status $rc)"
	exit 1
fi

if command -v systemd-sysusers > /dev/null; then
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	out=$(systemd-sysusers --root="$root" --dry-run "$sysusers" 2>&1)
	rc=$?
	echo "$out"
	if [ $rc != 0 ] || ! grep -q "Creating user 'refpaged'" <<< "$out"; then
		echo "FAIL: systemd-sysusers --dry-run $sysusers (status $rc)"
		exit 1
	fi
fi
echo "PASS"
