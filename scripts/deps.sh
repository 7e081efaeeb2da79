#!/bin/bash
# Install what refpaged needs to build and test on Debian 12.
set -euo pipefail
pkgs=(cmake gcc clang make pkg-config libev-dev libseccomp-dev libsystemd-dev libcmocka-dev
      systemd util-linux procps strace gnuplot-nox
      dpkg-dev file mandoc man-db systemd-container debootstrap
      # refpage-run's tests and perf/real-programs.sh: the programs run, and
      # the jemalloc example; libtasn1-doc ships the PDF that pdftoppm renders.
      xz-utils coreutils python3 time poppler-utils libtasn1-doc libjemalloc-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
	if ((EUID != 0)); then
		echo "deps: missing packages (install them as root): ${missing[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}"
fi
