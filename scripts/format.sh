#!/bin/bash
# clang-format the project's C sources (.clang-format; clang-format-14,
# whose output the config is tuned for).
#   scripts/format.sh            format every tracked .c/.h in place
#   scripts/format.sh --check    change nothing; list the files that differ,
#                                with how many lines each, exit 1 if any
#   scripts/format.sh [--check] FILE...   only these files
set -euo pipefail
cd "$(dirname "$0")/.."
cf=${CLANG_FORMAT:-clang-format-14}
if ! command -v "$cf" >/dev/null; then
	echo "format: $cf not found (scripts/deps.sh installs clang-format-14)" >&2
	exit 2
fi
check=0
if [[ ${1:-} == --check ]]; then
	check=1
	shift
fi
if (($#)); then
	files=("$@")
else
	mapfile -t files < <(git ls-files '*.c' '*.h')
fi
if ((!check)); then
	"$cf" -i --style=file "${files[@]}"
	exit 0
fi
bad=0 lines=0
for f in "${files[@]}"; do
	n=$("$cf" --style=file "$f" | diff "$f" - | grep -c '^<' || true)
	if ((n)); then
		printf '%5d %s\n' "$n" "$f"
		bad=$((bad + 1)) lines=$((lines + n))
	fi
done
if ((bad)); then
	echo "format: $bad of ${#files[@]} files differ from .clang-format ($lines lines);" \
		"scripts/format.sh formats them" >&2
	exit 1
fi
echo "format: ${#files[@]} files formatted"
