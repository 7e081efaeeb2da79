#!/bin/bash
# Build and run every test.   scripts/test.sh [--sanitize] [ctest args...]
# --sanitize builds with ASan+UBSan into build-san/ instead of build/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# /usr: the prefix of the .deb that `cpack -G DEB` makes in the build dir.
dir=build flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr)
if [[ ${1:-} == --sanitize ]]; then
	shift
	dir=build-san flags=(-DCMAKE_BUILD_TYPE=Debug -DRP_ASAN=ON -DRP_UBSAN=ON -DCMAKE_INSTALL_PREFIX=/usr)
fi
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
cd "$dir"
ctest --output-on-failure --timeout 300 "$@"
