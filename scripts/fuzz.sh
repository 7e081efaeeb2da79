#!/bin/bash
# Build the libFuzzer targets (clang, ASan+UBSan) into build-fuzz/ and run
# each one for a share of SECONDS (default 60 in all). Fails on any crash,
# leak, timeout or harness check; the input is kept in
# build-fuzz/artifacts/<target>/ and the command to replay it is printed.
#
#   scripts/fuzz.sh [SECONDS]   fuzz; the corpus grows in build-fuzz/corpus/<target>/,
#                               seeded from tests/fuzz/corpus/<target>/
#   scripts/fuzz.sh --seeds     regenerate the seed corpora in tests/fuzz/corpus/
#
# RP_FUZZ_LOG=debug (or err, info...) shows the daemon's log lines while
# fuzzing; quiet by default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

# clang's libFuzzer runtime comes in Debian's libclang-rt-<version>-dev.
ver=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
if [[ ! -e $(clang -print-runtime-dir)/libclang_rt.fuzzer-x86_64.a ]] &&
	! dpkg -s "libclang-rt-$ver-dev" >/dev/null 2>&1; then
	if ((EUID != 0)); then
		echo "fuzz: libFuzzer missing: install libclang-rt-$ver-dev as root" >&2
		exit 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libclang-rt-$ver-dev"
fi

dir=build-fuzz
CC=clang cmake -S . -B "$dir" -DRP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" -j"$(nproc)" --target fuzz_proto fuzz_session fuzz_journal fuzz_uffd_helper \
	fuzz_mkcorpus fuzz_mkcorpus_journal
bin=$dir/tests/fuzz

if [[ ${1:-} == --seeds ]]; then
	"$bin/fuzz_mkcorpus" tests/fuzz/corpus
	"$bin/fuzz_mkcorpus_journal" tests/fuzz/corpus
	echo "fuzz: seeds written to tests/fuzz/corpus/"
	exit 0
fi

total=${1:-60}
if ! [[ $total =~ ^[0-9]+$ ]] || ((total < 3)); then
	echo "usage: scripts/fuzz.sh [SECONDS >= 3] | --seeds" >&2
	exit 2
fi
# The decoders are small; the session machine gets most of the time.
targets=(fuzz_proto fuzz_journal fuzz_session)
declare -A share=([fuzz_proto]=$((total / 4 > 0 ? total / 4 : 1)))
share[fuzz_journal]=$((total / 4 > 0 ? total / 4 : 1))
share[fuzz_session]=$((total - share[fuzz_proto] - share[fuzz_journal]))
declare -A opts=(
	[fuzz_proto]="-max_len=4200 -use_value_profile=1"
	[fuzz_journal]="-max_len=16384 -use_value_profile=1"
	[fuzz_session]="-max_len=12000"
)

status=0
summary=()
for t in "${targets[@]}"; do
	corpus=$dir/corpus/$t artifacts=$dir/artifacts/$t log=$dir/$t.log
	mkdir -p "$corpus" "$artifacts"
	echo "fuzz: $t for ${share[$t]} s"
	set +e
	# shellcheck disable=SC2086 # opts are words
	"$bin/$t" -max_total_time="${share[$t]}" -timeout=30 -rss_limit_mb=4096 \
		-print_final_stats=1 -artifact_prefix="$artifacts/" ${opts[$t]} \
		"$corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1
	rc=$?
	set -e
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
	last=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: [0-9]+' | tail -n1 || true)
	cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
	ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
	corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
	verdict=ok
	if ((rc)); then verdict=FAILED; fi
	summary+=("$(printf '%-13s %9s execs  cov: %-5s ft: %-6s corpus: %-10s %s' "$t" \
		"${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$verdict")")
	if ((rc)); then
		status=1
		echo "fuzz: $t FAILED (exit $rc); its output:" >&2
		grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)' "$log" | tail -n 60 >&2
		sed -n "s/.*Test unit written to \(.*\)/\1/p" "$log" | while read -r a; do
			echo "fuzz: replay with: $bin/$t $a" >&2
		done
	fi
done
echo "fuzz: results (${total} s in all)"
printf '  %s\n' "${summary[@]}"
exit $status
