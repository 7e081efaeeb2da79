#!/bin/bash
# Install what refpaged needs to build and test on Debian 12.
set -euo pipefail
pkgs=(cmake gcc clang make pkg-config libev-dev libseccomp-dev libsystemd-dev libcmocka-dev
      systemd util-linux procps strace gnuplot-nox
      dpkg-dev file mandoc man-db systemd-container debootstrap
      # tests/packaging/: the .deb files checked by lintian's default profile.
      lintian
      # refpage-run's tests and perf/real-programs.sh: the programs run, and
      # the jemalloc example; libtasn1-doc ships the PDF that pdftoppm renders.
      xz-utils coreutils python3 time poppler-utils libtasn1-doc libjemalloc-dev
      # perf/real-programs.sh's other domains (with gcc and coreutils' sort
      # above): a database and an image tool (ImageMagick 6's convert).
      sqlite3 imagemagick
      # perf/report-vs-valgrind.sh: memcheck beside refpage-run --report.
      valgrind
      # CI: builds through ccache; scripts/format.sh's clang-format (its
      # output differs between versions: .clang-format is tuned for 14);
      # llvm-symbolizer for scripts/tsan.sh's reports.
      ccache clang-format-14 llvm-14)
missing=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# clang's libFuzzer and sanitizer runtimes (scripts/fuzz.sh, scripts/tsan.sh,
# the RP_FUZZ build of scripts/build-matrix.sh) are Debian's
# libclang-rt-<version>-dev: Debian 12's clang is 14.
ver=14
if command -v clang >/dev/null; then
	ver=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
fi
dpkg -s "libclang-rt-$ver-dev" >/dev/null 2>&1 || missing+=("libclang-rt-$ver-dev")
if ((${#missing[@]})); then
	if ((EUID != 0)); then
		echo "deps: missing packages (install them as root): ${missing[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}"
fi
