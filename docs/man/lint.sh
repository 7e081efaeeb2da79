#!/bin/bash
# Every page must render without a single message: mandoc -T lint at the
# "warning" level and above, and groff through man(1) as Debian renders
# it, with its warnings on. Style hints (mandoc's lowest level) are shown
# but do not fail.
#
#   lint.sh PAGE...
set -u
command -v mandoc > /dev/null || { echo "SKIP: no mandoc (package mandoc)"; exit 77; }
command -v man > /dev/null || { echo "SKIP: no man (package man-db)"; exit 77; }

fail=0
for page in "$@"; do
	warn=$(mandoc -T lint -W warning "$page" 2>&1)
	[ -n "$warn" ] && { echo "$warn"; fail=1; }
	mandoc -T lint -W style "$page" 2>&1 | grep -vxF -e "$warn" | sed 's/^/(style, not counted) /'
	# man -l: the page as a file; --warnings: groff -w w (all warnings).
	out=$(LC_ALL=C.UTF-8 MANWIDTH=80 MAN_KEEP_FORMATTING=0 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
	[ -n "$out" ] && { echo "groff: $page:"; echo "$out"; fail=1; }
done
[ $fail = 0 ] && echo "PASS: $# pages" || echo "FAIL"
exit $fail
