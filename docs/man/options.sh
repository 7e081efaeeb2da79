#!/bin/bash
# Every option a program's --help lists must be documented in its man page.
#
#   options.sh PAGE PROGRAM [PAGE PROGRAM]...
set -u
fail=0
while (($# >= 2)); do
	page=$1 prog=$2
	shift 2
	opts=$("$prog" --help 2>&1 | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u)
	[ -n "$opts" ] || { echo "FAIL: $prog --help lists no option"; fail=1; }
	for o in $opts; do
		# roff writes each - of an option as \-
		grep -qF -- "${o//-/\\-}" "$page" || { echo "FAIL: $(basename "$page") does not document $o"; fail=1; }
	done
	echo "$(basename "$page"): $(echo $opts | wc -w) options of $(basename "$prog") checked"
done
[ $fail = 0 ] && echo PASS
exit $fail
