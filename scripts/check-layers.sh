#!/bin/bash
# The daemon's module picture (docs/design.md, the table between the
# "layers" markers) against its includes: every `#include "x.h"` of
# daemon/m.c and daemon/m.h must be an arrow of that table, every module
# must be in it, and the table itself must have no cycle. A module's
# internal header m_int.h belongs to module m.
#   scripts/check-layers.sh [ROOT]
set -euo pipefail
root=${1:-$(dirname "$0")/..}
doc=$root/docs/design.md
table=$(sed -n '/<!-- layers -->/,/<!-- \/layers -->/p' "$doc" | grep -E '^ *[a-z_]+ +->' || true)
if [[ -z $table ]]; then
	echo "check-layers: no layer table in $doc" >&2
	exit 1
fi
declare -A allowed
while read -r mod arrow deps; do
	allowed[$mod]=" $deps "
done <<<"$table"

fail=0
for f in "$root"/daemon/*.c "$root"/daemon/*.h; do
	base=$(basename "$f")
	mod=${base%.*}
	mod=${mod%_int}
	if [[ -z ${allowed[$mod]+x} ]]; then
		echo "check-layers: $base: module '$mod' is not in the table of docs/design.md" >&2
		fail=1
		continue
	fi
	for dep in $(sed -n 's/^#include "\([a-z_]*\)\.h".*/\1/p' "$f"); do
		dep=${dep%_int}
		[[ $dep == "$mod" ]] && continue
		if [[ ${allowed[$mod]} != *" $dep "* ]]; then
			echo "check-layers: $base includes $dep.h: no arrow $mod -> $dep in docs/design.md" >&2
			fail=1
		fi
	done
done

# The table is a picture of layers: no module may reach itself.
declare -A state
visit() {
	local m=$1 d
	[[ ${state[$m]:-} == done ]] && return 0
	if [[ ${state[$m]:-} == open ]]; then
		echo "check-layers: the table has a cycle through $m" >&2
		return 1
	fi
	state[$m]=open
	for d in ${allowed[$m]:-}; do
		visit "$d" || return 1
	done
	state[$m]=done
}
for m in "${!allowed[@]}"; do
	visit "$m" || fail=1
done
if ((fail)); then
	exit 1
fi
echo "check-layers: ${#allowed[@]} modules, includes match docs/design.md, no cycle"
