#!/usr/bin/env bash
# perf/plot.sh RESULTS: PNG plots of a run.sh run with gnuplot, from
# RESULTS/tmp/bench.tsv and RESULTS/tmp/latency/*.cdf:
#   lat-cdf-WORKLOAD-tN.png   first-touch latency CDF, one curve per mode
#   ns-per-page-tN.png        ns per touched page per workload (log scale)
#   rss-tN.png                peak RSS growth per workload
set -euo pipefail

out=${1?usage: plot.sh RESULTS}
tsv=$out/tmp/bench.tsv
lat=$out/tmp/latency
[ -f "$tsv" ] || { echo "plot.sh: no $tsv" >&2; exit 1; }
term='set terminal pngcairo size 1280,720 noenhanced font ",11"'
# 16 distinct colours: gnuplot cycles its default 8, and a run with every
# switch has 11 modes.
palette="set linetype 1 lc rgb '#1f77b4'; set linetype 2 lc rgb '#ff7f0e'; set linetype 3 lc rgb '#2ca02c'; set linetype 4 lc rgb '#d62728'; set linetype 5 lc rgb '#9467bd'; set linetype 6 lc rgb '#8c564b'; set linetype 7 lc rgb '#e377c2'; set linetype 8 lc rgb '#7f7f7f'; set linetype 9 lc rgb '#bcbd22'; set linetype 10 lc rgb '#17becf'; set linetype 11 lc rgb '#000000'; set linetype 12 lc rgb '#aec7e8'; set linetype 13 lc rgb '#ffbb78'; set linetype 14 lc rgb '#98df8a'; set linetype 15 lc rgb '#ff9896'; set linetype 16 lc rgb '#c5b0d5'; set linetype cycle 16"

# One TSV column as a workload x mode matrix, for clustered histograms.
matrix() {
	awk -F'\t' -v col="$1" -v T="$2" '
	NR == 1 { for (i = 1; i <= NF; i++) idx[$i] = i; next }
	$3 == T {
		if (!($2 in sw)) { sw[$2] = 1; ws[nw++] = $2 }
		if (!($1 in sm)) { sm[$1] = 1; ms[nm++] = $1 }
		v[$2, $1] = $(idx[col])
	}
	END {
		printf "workload"
		for (j = 0; j < nm; j++) printf "\t%s", ms[j]
		print ""
		for (i = 0; i < nw; i++) {
			printf "%s", ws[i]
			for (j = 0; j < nm; j++) {
				x = v[ws[i], ms[j]]
				printf "\t%s", (x == "" || x ~ /nan/) ? "NaN" : x
			}
			print ""
		}
	}' "$tsv"
}

histogram() { # column threads ylabel logscale(0/1) png
	local data=$out/tmp/$1-t$2.dat
	matrix "$1" "$2" >"$data"
	local ncol
	ncol=$(head -1 "$data" | awk -F'\t' '{ print NF }')
	gnuplot <<EOF
$term
$palette
set output "$5"
set datafile separator "\t"
set datafile missing "NaN"
set title "$3, $2 thread(s)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key outside right top
set grid ytics
set xtics rotate by -25
set ylabel "$3"
$([ "$4" = 1 ] && echo "set logscale y")
set yrange [$([ "$4" = 1 ] && echo 10 || echo 0):*]
plot for [i=2:$ncol] "$data" using i:xtic(1) title columnheader(i)
EOF
}

cdf() { # workload threads png
	local plots=() f mode
	for mode in $modes; do
		f=$lat/$mode.$1.t$2.cdf
		[ -e "$f" ] || continue
		plots+=("\"$f\" using 1:2 with lines lw 2 title \"$mode\"")
	done
	[ ${#plots[@]} -gt 0 ] || return 0
	local IFS=,
	gnuplot <<EOF
$term
$palette
set output "$3"
set datafile separator "\t"
set title "first-touch latency CDF: $1, $2 thread(s)"
set logscale x
set xlabel "ns (log scale)"
set ylabel "fraction of first touches"
set yrange [0:1]
set grid
set key bottom right
plot ${plots[*]}
EOF
}

threads=$(awk -F'\t' 'NR > 1 { print $3 }' "$tsv" | sort -nu)
workloads=$(awk -F'\t' 'NR > 1 && !s[$2]++ { print $2 }' "$tsv")
# In the order of the run, so that a mode keeps its colour in every plot.
modes=$(awk -F'\t' 'NR > 1 && !s[$1]++ { print $1 }' "$tsv")
for t in $threads; do
	histogram ns_med "$t" "ns per touched page" 1 "$out/ns-per-page-t$t.png"
	histogram rss_mib "$t" "peak RSS growth, MiB" 0 "$out/rss-t$t.png"
	for w in $workloads; do
		cdf "$w" "$t" "$out/lat-cdf-$w-t$t.png"
	done
done
