#!/bin/sh
# Fact f: build malloc_syscalls.c, run it under strace with each mallopt
# setting, and count the system calls made between its markers (calls
# counted where they start; "resumed" continuation lines are skipped).
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cc -O2 -Wall -pthread -o "$dir/m" "$(dirname "$0")/malloc_syscalls.c"
ldd --version | head -1
for opts in "" "arena1" "trim" "arena1 trim"; do
	# shellcheck disable=SC2086 # word splitting of the options is wanted
	strace -f -qq -o "$dir/log" "$dir/m" $opts
	echo "== options: ${opts:-none}"
	awk 'index($0, "close(-1") { on = 1; next } index($0, "close(-2") { on = 0 }
	     on && !/resumed>/ {
	          sub(/^[0-9]+ +/, ""); n = $0; sub(/\(.*/, "", n)
	          if (n == "openat") { f = $0; sub(/^[^"]*"/, "", f); sub(/".*/, "", f); n = n " " f }
	          if (n == "madvise") { a = $0; sub(/^[^,]*, [^,]*, /, "", a); sub(/[) <].*/, "", a); n = n " " a }
	          if (n == "mmap") { a = $0; sub(/^[^,]*, [^,]*, [^,]*, /, "", a); sub(/,.*/, "", a); n = n " " a }
	          c[n]++ }
	     END { for (k in c) printf "   %-50s %d\n", k, c[k] }' "$dir/log" | sort
done
