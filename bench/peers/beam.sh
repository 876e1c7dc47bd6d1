#!/usr/bin/env bash
# beam.sh: sealflow vs Apache Beam (Go SDK, Prism runner in-process) on
# Nexmark q5 and q7, same machine, same JSON-lines input file, both writing
# JSON lines; outputs checked to hold the same rows (as a multiset, after
# canonical JSON re-encoding) with rowcmp.
#
#   bench/peers/beam.sh [EVENTS] [RUNS]     (defaults: 1000000 events, 3 runs)
#
# CPU seconds are user+system of each whole process (bash's time), so both
# sides pay for reading and parsing the file and writing the rows; Beam's
# process holds the Prism runner and its loopback SDK worker. Figures are
# medians over RUNS, the two systems interleaved. Prints a Markdown table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
events=${1:-1000000}
runs=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$root" && go build -o "$work/sealflow" ./cmd/sealflow)
(cd "$here" && go build -o "$work/beamq" ./beamq && go build -o "$work/rowcmp" ./rowcmp)
"$work/sealflow" nexmark gen --events "$events" --seed 1 > "$work/events.jsonl"

# cpu CMD...: runs CMD (stdout to $work/out) and prints its user+system CPU
# seconds and its wall seconds.
cpu() {
	local TIMEFORMAT='%3U %3S %3R'
	local t
	t=$( { time "$@" > "$work/out" 2> "$work/err"; } 2>&1 ) || { cat "$work/err" >&2; return 1; }
	awk '{printf "%.3f %.3f\n", $1 + $2, $3}' <<< "$t"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "| query | rows | sealflow CPU-s (process) | sealflow events/s per core | sealflow wall-s | Beam CPU-s (process) | Beam events/s per core | Beam wall-s | sealflow / Beam per core |"
echo "|---|---|---|---|---|---|---|---|---|"
for q in q5 q7; do
	s=() sw=() b=() bw=()
	for ((i = 0; i < runs; i++)); do
		read -r c w < <(cpu "$work/sealflow" nexmark run --query "$q" --input "$work/events.jsonl" --out "$work/$q.sealflow.jsonl")
		s+=("$c") sw+=("$w")
		rm -f "$work/$q.beam.jsonl"
		read -r c w < <(cpu "$work/beamq" --query "$q" --input "$work/events.jsonl" --out "$work/$q.beam.jsonl")
		b+=("$c") bw+=("$w")
	done
	rows=$("$work/rowcmp" "$work/$q.sealflow.jsonl" "$work/$q.beam.jsonl" | awk '{print $2}')
	sm=$(printf '%s\n' "${s[@]}" | median)
	swm=$(printf '%s\n' "${sw[@]}" | median)
	bm=$(printf '%s\n' "${b[@]}" | median)
	bwm=$(printf '%s\n' "${bw[@]}" | median)
	echo "$q sealflow CPU-s: ${s[*]}; Beam CPU-s: ${b[*]}" >&2
	awk -v q="$q" -v r="$rows" -v s="$sm" -v sw="$swm" -v b="$bm" -v bw="$bwm" -v n="$events" 'BEGIN {
		printf "| %s | %d | %.2f | %.0f k | %.2f | %.2f | %.1f k | %.2f | %.0f× |\n", q, r, s, n / s / 1000, sw, b, n / b / 1000, bw, b / s }'
	rm -f "$work/$q.sealflow.jsonl" "$work/$q.beam.jsonl"
done
