#!/usr/bin/env bash
# tests/kernel/report.sh RESULTS-DIR > docs/conformance.md
# Turns the serial logs of tests/kernel/run.sh (serial-patched.log,
# serial-stock.log) and, when present, the host run (host.log, from
# tests/conformance/run-host.sh) into the conformance table.
#   report.sh --carry OLD-REPORT RESULTS-DIR: for each guest column with no
# serial log in RESULTS-DIR (a host-only run: run.sh --host-only), the
# column of an earlier docs/conformance.md, labelled stale; a case that
# report did not have shows "–" there.
set -euo pipefail
carry=
if [ "${1:-}" = --carry ]; then
	carry=${2?usage: report.sh --carry OLD-REPORT RESULTS-DIR}
	shift 2
fi
dir=${1?usage: report.sh [--carry OLD-REPORT] RESULTS-DIR}

# Columns: "label<TAB>file<TAB>phase<TAB>backend"; a phase is the uid the
# "# conformance: ... uid N" header line names.
cols=()
stale_dir=
if [ -n "$carry" ]; then
	stale_dir=$(mktemp -d "${TMPDIR:-/tmp}/report-stale.XXXXXX")
	trap 'rm -rf "$stale_dir"' EXIT
	# The old report's guest columns as logs of RESULT lines: its table
	# (statuses, notes by number), its notes, its PASS observations.
	python3 - "$carry" "$stale_dir" <<-'PY'
	import re, sys
	doc, out = sys.argv[1], sys.argv[2]
	lines = open(doc).read().split("\n")
	hdr = next(i for i, l in enumerate(lines) if l.startswith("| case |"))
	labels = [c.strip().removesuffix(" (stale)")
	          for c in lines[hdr].strip().strip("|").split("|")][1:]
	notes = dict(m.groups() for m in (re.match(r"^(\d+)\. (.*)$", l) for l in lines) if m)
	obs = {}  # "- `case`, label: what it saw" (labels have colons)
	for l in lines:
	    m = re.match(r"^- `([^`]+)`, (.*)$", l)
	    for label in labels if m else []:
	        for shown in (label + " (stale): ", label + ": "):
	            if m.group(2).startswith(shown):
	                obs[(m.group(1), label)] = m.group(2)[len(shown):]
	cols = {
	    "kernel: 6.1+patch, root": ("serial-patched.log", 0, "kernel"),
	    "kernel: 6.1+patch, uid 65534": ("serial-patched.log", 65534, "kernel"),
	    "kernel: 6.1+patch DEBUG_VM, root": ("serial-patched-debugvm.log", 0, "kernel"),
	    "kernel: 6.1+patch DEBUG_VM, uid 65534": ("serial-patched-debugvm.log", 65534, "kernel"),
	    "refpaged: 6.1+patch guest, root": ("serial-patched.log", 0, "refpaged"),
	    "refpaged: 6.1+patch guest, uid 65534": ("serial-patched.log", 65534, "refpaged"),
	    "refpaged: stock 6.1 guest, root": ("serial-stock.log", 0, "refpaged"),
	    "refpaged: stock 6.1 guest, uid 65534": ("serial-stock.log", 65534, "refpaged"),
	    "kernel: stock 6.1 guest": ("serial-stock.log", 0, "kernel"),
	}
	logs = {}
	for l in lines[hdr + 2:]:
	    if not l.startswith("| `"):
	        break
	    cells = [c.strip() for c in l.strip().strip("|").split("|")]
	    case = cells[0].strip("`")
	    for label, cell in zip(labels, cells[1:]):
	        if label not in cols or cell in ("", "–"):
	            continue
	        f, uid, bk = cols[label]
	        m = re.match(r"^(\w+)(?: \[(\d+)\])?$", cell)
	        st, n = m.group(1), m.group(2)
	        why = notes.get(n, "") if n else obs.get((case, label), "")
	        logs.setdefault(f, {}).setdefault(uid, []).append(f"RESULT\t{case}\t{bk}\t{st}\t{why}")
	for f, by_uid in logs.items():
	    with open(f"{out}/{f}", "w") as o:
	        for uid, rs in by_uid.items():
	            o.write(f"# conformance: carried over from {doc}, uid {uid}\n")
	            o.write("\n".join(rs) + "\n")
	PY
	# Where the guest columns come from: the old report's run, or the run
	# it carried them over from in turn.
	{
		{ grep -o 'carried over from the previous report (patch hash [^)]*)' "$carry" || true; } |
			sed 's/.*(patch hash //; s/)$//'
		sed -n 's/^(patch hash \(.*\)). Do not edit by$/\1/p' "$carry"
	} | sed -n 1p >"$stale_dir/when.txt"
fi
# label, log, uid, backend; a guest log missing here comes from the old
# report when --carry gave one (its label then says so).
add() {
	if [ -f "$dir/$2" ]; then
		cols+=("$1	$dir/$2	$3	$4")
	elif [ -n "$stale_dir" ] && [ -f "$stale_dir/$2" ]; then
		cols+=("$1 (stale)	$stale_dir/$2	$3	$4")
	fi
	return 0
}
add "kernel: 6.1+patch, root" serial-patched.log 0 kernel
add "kernel: 6.1+patch, uid 65534" serial-patched.log 65534 kernel
add "kernel: 6.1+patch DEBUG_VM, root" serial-patched-debugvm.log 0 kernel
add "kernel: 6.1+patch DEBUG_VM, uid 65534" serial-patched-debugvm.log 65534 kernel
add "refpaged: 6.1+patch guest, root" serial-patched.log 0 refpaged
add "refpaged: 6.1+patch guest, uid 65534" serial-patched.log 65534 refpaged
add "refpaged: stock 6.1 guest, root" serial-stock.log 0 refpaged
add "refpaged: stock 6.1 guest, uid 65534" serial-stock.log 65534 refpaged
add "kernel: stock 6.1 guest" serial-stock.log 0 kernel
add "refpaged: host, root" host.log 0 refpaged
add "refpaged: host, uid 65534" host.log 65534 refpaged

guest_kernel() { grep -m1 '^=== GUEST' "$1" 2>/dev/null | awk '{print $3}'; }
accel() { [ -f "$dir/accel-$1.txt" ] && cat "$dir/accel-$1.txt" || echo "? ?"; }

cat <<EOF
# Conformance: refpaged and the MAP_REFPAGE kernel patch

Generated by \`tests/kernel/report.sh\` from a real run of \`tests/kernel/run.sh\`
(patch hash $(cat "$dir/patch-hash.txt" 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d)). Do not edit by
hand: rerun \`bash tests/kernel/run.sh --report\`.

One program, \`tests/conformance/conformance.c\`, runs every case against each backend
available where it runs: **kernel** is \`mmap(MAP_PRIVATE|MAP_REFPAGE, -1, refpage)\` on a
6.1 kernel with \`tests/kernel/0001-mm-introduce-reference-pages-6.1.patch\`; **refpaged** is
\`refpage_mmap()\` from librefpage, served by a refpaged running in the same system. The kernel
patch is the reference semantics. Statuses: **PASS**; **FAIL**; **DIFF**, a difference from
the kernel patch that is by design (the reason is below); **SKIP**, not applicable or not
available (the reason is below).

Where it ran:
EOF
[ -f "$dir/serial-patched.log" ] && echo "- 6.1+patch guest: \`$(guest_kernel "$dir/serial-patched.log")\`, QEMU $(accel patched | awk '{print $1" ("$2" s wall for the whole guest run)"}'), busybox initramfs, refpaged inside the guest"
[ -f "$dir/serial-patched-debugvm.log" ] && echo "- 6.1+patch guest built with \`CONFIG_DEBUG_VM\` (VM_BUG_ON, page flag and list checks): \`$(guest_kernel "$dir/serial-patched-debugvm.log")\`, QEMU $(accel patched-debugvm | awk '{print $1" ("$2" s)"}')"
[ -f "$dir/serial-stock.log" ] && echo "- stock 6.1 guest: \`$(guest_kernel "$dir/serial-stock.log")\`, QEMU $(accel stock | awk '{print $1" ("$2" s)"}'), same initramfs (MAP_REFPAGE fails with EBADF there: the kernel backend skips)"
if [ -n "$stale_dir" ] && ls "$stale_dir"/serial-*.log >/dev/null 2>&1 && [ ! -f "$dir/serial-patched.log" ]; then
	echo "- **guest columns marked (stale)**: not rerun for this report (\`run.sh --host-only\`: no guest kernel was booted); carried over from the previous report (patch hash $(cat "$stale_dir/when.txt")), which ran before librefpage's file backend (#16) and before the cases it did not have (– in those columns). Their refpaged uid 65534 results are from the user-mode-only uffd backend, which librefpage no longer picks by itself"
fi
[ -f "$dir/host.log" ] && echo "- host: \`$(grep -m1 '^# conformance' "$dir/host.log" | awk '{print $4}')\`, refpaged and the suite run by \`tests/conformance/run-host.sh\`"
echo
for f in serial-patched serial-patched-debugvm serial-stock; do
	[ -f "$dir/$f.log" ] || continue
	n=$(sed -n '/^=== DMESG BEGIN/,/^=== DMESG END/p' "$dir/$f.log" |
		grep -cE 'BUG|WARNING|Oops|Bad rss-counter|general protection|Call Trace' || true)
	echo "- \`$f\`: $( [ "$n" = 0 ] && echo "dmesg clean (no BUG, WARNING, Oops, Bad rss-counter, Call Trace)" || echo "**dmesg has $n error lines**")$(grep -q '^=== DONE' "$dir/$f.log" || echo ", **the guest did not finish**")"
done
echo
echo "uid 65534 runs have \`vm.unprivileged_userfaultfd=0\` (the Debian default): such a process can only make a \`UFFD_USER_MODE_ONLY\` userfaultfd, so librefpage serves it from its file backend (a sealed memfd of the template mapped \`MAP_PRIVATE\`; since #16). Root gets the uffd backend (refpaged)."
echo

# The table, and the notes (one per distinct DIFF/FAIL/SKIP reason).
awk -v ncols="${#cols[@]}" -F'\t' '
BEGIN {
	for (i = 0; i < ncols; i++) {
		getline line < "/dev/stdin"
		split(line, f, "\t")
		label[i] = f[1]; file[i] = f[2]; uid[i] = f[3]; bk[i] = f[4]
	}
	for (i = 0; i < ncols; i++) {
		cur = -1
		while ((getline l < file[i]) > 0) {
			if (l ~ /^# conformance:/) { n = split(l, hw, " "); cur = hw[n] }
			if (l ~ /^RESULT\t/ && cur == uid[i]) {
				split(l, r, "\t")
				if (r[3] != bk[i]) continue
				if (!(r[2] in seen)) { seen[r[2]] = 1; order[ncase++] = r[2] }
				st[r[2], i] = r[4]; why[r[2], i] = r[5]
			}
		}
		close(file[i])
	}
	printf "| case |"
	for (i = 0; i < ncols; i++) printf " %s |", label[i]
	printf "\n|---|"
	for (i = 0; i < ncols; i++) printf "---|"
	printf "\n"
	for (c = 0; c < ncase; c++) {
		k = order[c]
		printf "| `%s` |", k
		for (i = 0; i < ncols; i++) {
			s = st[k, i]
			if (s == "") { printf " – |"; continue }
			w = why[k, i]
			if (s != "PASS" && w != "") {
				if (!(w in noteno)) { noteno[w] = ++nnotes; note[nnotes] = w }
				printf " %s [%d] |", s, noteno[w]
			} else
				printf " %s |", s
			count[i, s]++
		}
		printf "\n"
	}
	printf "| **total** |"
	for (i = 0; i < ncols; i++)
		printf " %d pass, %d fail, %d diff, %d skip |", count[i, "PASS"], count[i, "FAIL"], count[i, "DIFF"], count[i, "SKIP"]
	printf "\n\nNotes:\n\n"
	for (n = 1; n <= nnotes; n++) printf "%d. %s\n", n, note[n]
	# observations attached to PASS results (what the case saw)
	printf "\nWhat the passing cases with an observation saw:\n\n"
	for (c = 0; c < ncase; c++) {
		k = order[c]
		for (i = 0; i < ncols; i++)
			if (st[k, i] == "PASS" && why[k, i] != "" && !((k, why[k, i]) in shown)) {
				shown[k, why[k, i]] = 1
				printf "- `%s`, %s: %s\n", k, label[i], why[k, i]
			}
	}
}' < <(printf '%s\n' "${cols[@]}")

cat <<'EOF'

## The differences, explained

- **Read faults allocate under refpaged** (`smaps_rss_read`). userfaultfd can only resolve a
  missing page of an anonymous mapping by installing a page in the faulting mm: `UFFDIO_COPY`
  makes a private copy (refpaged's choice), `UFFDIO_ZEROPAGE` maps only the zero page, and
  there is no ioctl that maps some other page read-only into it. So on the uffd backend every
  page read costs a page of RSS. librefpage's file backend (uid 65534 here) maps the pages of
  the template's file instead: a read costs no anonymous memory (`Anonymous` +0) but the
  shared file pages count in `Rss` (as `RssShmem`), at most one 4 MiB file per template and
  process however many mappings read it. The kernel patch maps the one reference page
  read-only through a special pte, like the zero page, and counts nothing until the first
  write. Writes cost the same on all of them (`smaps_rss_write`).
- **Kernel-mode access** (`read_syscall`, `write_syscall`, `readv_syscall`, `recv_syscall`,
  `o_direct_read`, `process_vm_readv`, `mlock`). The kernel patch serves a fault the kernel
  takes on the program's behalf (`copy_to_user` in `read(2)`, `readv(2)`, `recv(2)`;
  `copy_from_user` in `write(2)`; `get_user_pages()` for `O_DIRECT` and `mlock(2)`'s populate)
  like any other, and so do both of librefpage's backends as it picks them: root's uffd
  backend has a full userfaultfd, and uid 65534, which can only make a `UFFD_USER_MODE_ONLY`
  one (`vm.unprivileged_userfaultfd=0`), gets the file backend, where the kernel resolves
  every fault itself. One access the patch does not serve: another process's
  `process_vm_readv(2)` of an untouched page fails with `EFAULT` there (seen in both patched
  guests; a limit the port's description states: `get_user_pages()` without `FOLL_WRITE`
  finds the special pte of an untouched page), where refpaged's pages read the reference (a
  DIFF in the reader's favour). Only a client that asks for the uffd backend
  with a user-mode-only userfaultfd (`RP_CONNECT_UFFD`, `refpage-run --backend uffd`), or
  any uid 65534 client before #16, sees those system calls fail with `EFAULT` (`ENOMEM` for
  mlock): a fault taken in the kernel is not delivered to refpaged then.
- **The reference page's later life** (`owner_changed`, `owner_unmapped`). `refpage_mmap()`
  copies the page's contents at the call into a daemon template: later writes by the owner are
  not seen, and unmapping it changes nothing. The 6.1 port pins the page at `mmap()` and maps
  that physical page shared: unmapping it changes nothing either, but the owner's in-place
  writes show through every page of the mapping not yet written, including pages already read.
  (v1 looked the page up by address on every fault and raised SIGSEGV once it was unmapped;
  see the patch description for why the port does not.)
- **What is accepted as a reference page** (`reject_*`). The kernel refuses what it cannot
  share safely: the zero page, a THP subpage, a page of another refpage mapping, an unmapped
  address (`EINVAL`). refpaged copies bytes, so any readable page will do; an unmapped address
  makes `refpage_mmap()` raise SIGSEGV in the caller (it `memcpy()`s the page) instead of
  returning an error.
EOF

# Timing table from the BENCH lines.
bench_table() { # file label
	local f=$1
	grep -q '^BENCH' "$f" 2>/dev/null || return 0
	echo
	echo "### $2"
	echo
	echo "| backend | first access | pages | ns/page, median of 5 | min | max |"
	echo "|---|---|---|---|---|---|"
	grep -P '^BENCH\t' "$f" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $7}'
}
cat <<'EOF'

## Guest fault timings: EMULATED (QEMU TCG), not performance numbers

Sequential first touch of 2048 pages (8 MiB), one byte per page, 5 fresh mappings each, in the guest
(`conformance --bench 2048`), 2 emulated CPUs. These runs use QEMU's TCG software emulator
(this machine's /dev/kvm is PVM and cannot boot these kernels): every number is an emulation
artefact, userfaultfd round trips are 10-60x slower than native and zero-filling costs more
than copying. They show orders of magnitude and the shape (read vs write, shared vs copied),
nothing more. `anon` is plain anonymous memory (zero page on read).
EOF
bench_table "$dir/serial-patched.log" "6.1+patch guest ($(accel patched | awk '{print $1}'))"
bench_table "$dir/serial-stock.log" "stock 6.1 guest ($(accel stock | awk '{print $1}'))"
# A host-only report keeps the old report's guest timing tables, marked.
if [ -n "$stale_dir" ] && [ ! -f "$dir/serial-patched.log" ] && [ ! -f "$dir/serial-stock.log" ]; then
	awk '/^## Guest fault timings/ { g = 1 } g && /^### / { p = 1 } p' "$carry" |
		sed '/^### .*(stale/! s/^### \(.*\)$/### \1 (stale, carried over)/'
fi
