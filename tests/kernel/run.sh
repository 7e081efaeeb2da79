#!/usr/bin/env bash
# tests/kernel/run.sh: the conformance suite on a Linux 6.1 kernel carrying
# the MAP_REFPAGE port (0001-mm-introduce-reference-pages-6.1.patch), under
# QEMU, next to refpaged running in the same guest; optionally also on the
# unpatched kernel. See tests/kernel/README.md.
#
#   bash tests/kernel/run.sh [--kernel patched|stock|both] [--cache DIR]
#                            [--out DIR] [--jobs N] [--timeout S] [--no-deps]
#                            [--build-only] [--report] [--debug-vm]
#   bash tests/kernel/run.sh --host-only [--report]
#
# --kernel   which kernels to boot (default both: the stock tree is built
#            anyway, as the base of the patched one)
# --cache    kernel trees and builds (default /var/cache/refpaged-kernel);
#            a build is reused while the patch's hash is unchanged
# --out      serial logs and results (default $cache/results)
# --report   regenerate docs/conformance.md from the results (report.sh)
# --host-only  only the host run (no kernel, no guest: where none can be
#            booted); with --report the guest columns of the current
#            docs/conformance.md are carried over, marked stale
# --debug-vm a second flavour, CONFIG_DEBUG_VM (VM_BUG_ON, page and rmap
#            sanity checks), in a tree of its own ($cache/debugvm): a full
#            build; its serial logs are serial-<kernel>-debugvm.log
#
# Fails when a guest does not finish, when any case FAILs, or when the
# guest's dmesg has BUG, WARNING, Oops or "Bad rss-counter".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
patch=$here/0001-mm-introduce-reference-pages-6.1.patch
cache=/var/cache/refpaged-kernel
out=
kernels=both
jobs=$(nproc)
timeout_s=3600
deps=1
build_only=0
report=0
debug=0
host_only=0
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) kernels=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--out) out=$2; out_given=1; shift 2 ;;
	--jobs) jobs=$2; shift 2 ;;
	--timeout) timeout_s=$2; shift 2 ;;
	--no-deps) deps=0; shift ;;
	--build-only) build_only=1; shift ;;
	--report) report=1; shift ;;
	--debug-vm) debug=1; shift ;;
	--host-only) host_only=1; shift ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
out=${out:-$cache/results}
mkdir -p "$cache" "$out"
log() { echo "[run.sh $(date +%T)] $*"; }

# --- packages ---------------------------------------------------------------
pkgs=(qemu-system-x86 busybox-static linux-source-6.1 flex bison bc libelf-dev libssl-dev
	cpio dwarves kmod xz-utils gcc make)
# --host-only boots nothing: the project's own packages are enough.
[ $host_only = 1 ] && pkgs=(gcc make)
if [ $deps = 1 ]; then
	missing=()
	for p in "${pkgs[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	fi
	bash "$repo/scripts/deps.sh" >/dev/null
fi

# --- the suite on the host ------------------------------------------------------
# refpaged and the suite, built once; then the suite on the host's own
# kernel, for the record (refpaged only: no MAP_REFPAGE there).
host_run() {
	pbuild=$cache/project-build
	log "building refpaged and conformance-static in $pbuild"
	cmake -S "$repo" -B "$pbuild" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build "$pbuild" -j"$jobs" --target refpaged conformance conformance-static >"$pbuild.log" 2>&1 ||
		{ tail -30 "$pbuild.log"; exit 1; }
	log "the suite on the host ($(uname -r)): $out/host.log"
	"$repo/tests/conformance/run-host.sh" "$pbuild/daemon/refpaged" \
		"$pbuild/tests/conformance/conformance" "$pbuild/tests/conformance/conformance-static" \
		>"$out/host.log" 2>&1 || { echo "run.sh: the host run failed:"; grep -P '\tFAIL\t' "$out/host.log" || tail -20 "$out/host.log"; status_host=1; }
}

# --- host only ----------------------------------------------------------------
if [ $host_only = 1 ]; then
	# Results of their own: never mixed with guest logs of another run.
	[ -n "${out_given:-}" ] || out=$(mktemp -d "$cache/results-host.XXXXXX")
	host_run
	sha256sum "$patch" | cut -c1-16 >"$out/patch-hash.txt"
	if [ $report = 1 ]; then
		# The old report is read before it is replaced.
		bash "$here/report.sh" --carry "$repo/docs/conformance.md" "$out" >"$out/conformance.md" &&
			cp "$out/conformance.md" "$repo/docs/conformance.md" &&
			log "wrote docs/conformance.md (guest columns carried over, marked stale)"
	fi
	if [ "${status_host:-0}" = 0 ]; then log "ok"; else log "FAILED"; fi
	exit "${status_host:-0}"
fi

# --- kernels ----------------------------------------------------------------
src_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$src_tar" ] || { echo "run.sh: $src_tar missing (package linux-source-6.1)"; exit 1; }
# x86_64_defconfig + kvm_guest.config, no debug info. USERFAULTFD, MEMFD and
# THP are in the defconfig already; made explicit.
configure() {
	make -s x86_64_defconfig
	make -s kvm_guest.config
	./scripts/config -d DEBUG_INFO -d DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT -e DEBUG_INFO_NONE \
		-d DEBUG_INFO_BTF -e USERFAULTFD -e TRANSPARENT_HUGEPAGE -e MEMFD_CREATE
	if [ $debug = 1 ]; then
		./scripts/config -e DEBUG_VM -e DEBUG_VM_PGFLAGS -e DEBUG_LIST
	fi
	make -s olddefconfig
}

# One tree, $cache/stock (so named after its first build; kbuild records its
# absolute path, so it never moves: a copied tree rebuilds objtool and with it
# every object). It is built stock first, the bzImage kept as
# $cache/bzImage-stock; then the patch is applied in place and only what it
# touches (~40 objects) is rebuilt, kept as $cache/bzImage-patched-<hash>.
# $tree/.refpage-state says which state the tree is in.
tree=$cache/stock sfx=
[ $debug = 1 ] && tree=$cache/debugvm sfx=-debugvm
phash=$(sha256sum "$patch" | cut -c1-16)
stock_img=$cache/bzImage$sfx-stock
patched_img=$cache/bzImage$sfx-patched-$phash
state() { cat "$tree/.refpage-state" 2>/dev/null || echo none; }

tree_to_stock() {
	case $(state) in
	stock) return 0 ;;
	patched-*)
		local old
		old=$cache/$(state)$sfx.patch
		log "reverting $(state) in $tree"
		(cd "$tree" && patch -p1 -R --quiet <"$old") || { rm -rf "$tree"; }
		;;
	*) rm -rf "$tree" ;;
	esac
	if [ ! -d "$tree" ]; then
		log "extracting and configuring 6.1 in $tree"
		mkdir -p "$tree"
		tar -C "$tree" --strip-components=1 -xJf "$src_tar"
		(cd "$tree" && configure)
	fi
	echo stock >"$tree/.refpage-state"
}

make_image() { # destination
	log "make bzImage in $tree (from scratch: 13-20 min with 2 cores; incremental: 1-3 min)"
	(cd "$tree" && make -j"$jobs" bzImage >"$cache/build$sfx.log" 2>&1) ||
		{ tail -30 "$cache/build$sfx.log"; exit 1; }
	cp "$tree/arch/x86/boot/bzImage" "$1"
}

build_stock() {
	[ -f "$stock_img" ] && return 0
	tree_to_stock
	make_image "$stock_img"
}

build_patched() {
	if [ -f "$patched_img" ]; then
		log "reusing $patched_img (patch hash $phash)"
		return 0
	fi
	tree_to_stock
	log "applying the patch (hash $phash) in $tree"
	cp "$patch" "$cache/patched-$phash$sfx.patch"
	(cd "$tree" && patch -p1 --quiet <"$patch") || exit 1
	echo "patched-$phash" >"$tree/.refpage-state"
	make_image "$patched_img"
	# images and patch records of older patches, this flavour only
	for f in "$cache/bzImage$sfx-patched-"* "$cache/patched-"*"$sfx.patch"; do
		case $f in *"$phash"*) continue ;; esac
		[ -z "$sfx" ] && case $f in *-debugvm*) continue ;; esac
		rm -f "$f"
	done
}

case $kernels in
patched) build_patched ;;
stock) build_stock ;;
both) build_stock; build_patched ;;
*) echo "run.sh: --kernel patched|stock|both" >&2; exit 2 ;;
esac
[ $build_only = 1 ] && exit 0

# --- the programs for the guest: built by host_run above ---------------------
host_run

# --- initramfs ---------------------------------------------------------------
ird=$(mktemp -d "${TMPDIR:-/tmp}/refpage-initrd.XXXXXX")
trap 'rm -rf "$ird"' EXIT
mkdir -p "$ird"/{bin,sbin,proc,sys,dev,tmp,lib,lib64,etc}
cp /bin/busybox "$ird/bin/busybox"
for a in $("$ird/bin/busybox" --list); do
	[ -e "$ird/bin/$a" ] || ln -s busybox "$ird/bin/$a"
done
cp "$pbuild/tests/conformance/conformance-static" "$ird/bin/conformance"
# refpaged is dynamically linked (libsystemd, libseccomp, libev): its
# libraries go along, at the paths the dynamic loader looks at.
cp "$pbuild/daemon/refpaged" "$ird/bin/refpaged"
for l in $(ldd "$pbuild/daemon/refpaged" | grep -o '/[^ ]*'); do
	mkdir -p "$ird$(dirname "$l")"
	cp -L "$l" "$ird$l"
done
echo 'root:x:0:0::/:/bin/sh' >"$ird/etc/passwd"
echo 'nobody:x:65534:65534::/:/bin/false' >>"$ird/etc/passwd"
cat >"$ird/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=1777 tmp /tmp
echo "=== GUEST $(uname -r) $(cat /proc/cmdline)"
echo "=== SYSCTL vm.unprivileged_userfaultfd=$(cat /proc/sys/vm/unprivileged_userfaultfd)"
echo "=== THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
/bin/refpaged --socket /tmp/rp.sock >/tmp/refpaged.log 2>&1 &
rp=$!
i=0
while [ ! -S /tmp/rp.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
chmod 666 /tmp/rp.sock 2>/dev/null
echo "=== PHASE root"
/bin/conformance --socket /tmp/rp.sock --timeout 600
echo "=== PHASE uid65534"
/bin/conformance --socket /tmp/rp.sock --timeout 600 --uid 65534
echo "=== PHASE bench"
/bin/conformance --socket /tmp/rp.sock --bench 2048
kill $rp 2>/dev/null
sleep 0.5
echo "=== REFPAGED LOG BEGIN"
tail -20 /tmp/refpaged.log
echo "=== REFPAGED LOG END"
echo "=== DMESG BEGIN"
dmesg
echo "=== DMESG END"
echo "=== DONE"
poweroff -f
EOF
chmod +x "$ird/init"
chmod 755 "$ird" # mktemp -d made it 0700: the guest's / would be closed to uid 65534
initrd=$out/initramfs.cpio.gz
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 >"$initrd")

# --- boot ----------------------------------------------------------------------
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then
	accel=(-enable-kvm -cpu host) accel_name=kvm
else
	# /dev/kvm may be PVM here: it cannot boot a stock kernel (KERNEL-NOTES.md)
	accel=(-accel tcg -cpu max) accel_name=tcg
fi
bios=()
[ -f /usr/share/qemu/qboot.rom ] && bios=(-bios /usr/share/qemu/qboot.rom)

boot() { # name bzImage
	local name=$1 img=$2 serial=$out/serial-$1$sfx.log
	log "booting the $name kernel ($accel_name); serial console in $serial"
	local t0=$SECONDS
	timeout "$timeout_s" qemu-system-x86_64 "${accel[@]}" "${bios[@]}" -m 2G -smp 2 \
		-nographic -no-reboot -kernel "$img" -initrd "$initrd" \
		-append "console=ttyS0 quiet panic=-1 loglevel=4 transparent_hugepage=madvise" \
		</dev/null >"$serial" 2>&1 || true
	tr -d '\r' <"$serial" >"$serial.tmp" && mv "$serial.tmp" "$serial"
	echo "$accel_name $((SECONDS - t0))" >"$out/accel-$name$sfx.txt"
	log "$name: guest ran $((SECONDS - t0)) s"
}

status=${status_host:-0}
check() { # name
	local serial=$out/serial-$1$sfx.log
	if ! grep -q '^=== DONE' "$serial"; then
		echo "run.sh: $1: the guest did not finish (see $serial)"; status=1
	fi
	if sed -n '/^=== DMESG BEGIN/,/^=== DMESG END/p' "$serial" |
		grep -E 'BUG|WARNING|Oops|Bad rss-counter|general protection|Call Trace'; then
		echo "run.sh: $1: the guest's dmesg has the errors above"; status=1
	fi
	if grep -P '^RESULT\t.*\tFAIL\t' "$serial"; then
		echo "run.sh: $1: FAILed cases above"; status=1
	fi
	printf '%s: ' "$1"; { grep '^SUMMARY' "$serial" || echo "no SUMMARY"; } | tr '\n' ' '; echo
}

case $kernels in
patched) boot patched "$patched_img"; check patched ;;
stock) boot stock "$stock_img"; check stock ;;
both)
	boot patched "$patched_img"; check patched
	boot stock "$stock_img"; check stock ;;
esac
echo "$phash" >"$out/patch-hash.txt"
if [ $report = 1 ]; then
	bash "$here/report.sh" "$out" >"$repo/docs/conformance.md"
	log "wrote docs/conformance.md"
fi
if [ "$status" = 0 ]; then log "ok"; else log "FAILED"; fi
exit "$status"
