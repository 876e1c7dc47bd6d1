#!/usr/bin/env bash
# run.sh: sealflow vs Benthos on Nexmark q0, q1, q2, same machine, same
# JSON-lines input file, both writing JSON lines; outputs checked to hold the
# same rows (as a multiset, after canonical JSON re-encoding) with rowcmp.
#
#   bench/peers/run.sh [EVENTS] [RUNS]     (defaults: 1000000 events, 3 runs)
#
# CPU seconds are user+system of each whole process (bash's time), so both
# sides pay for reading and parsing the file and writing the rows; the figure
# is the median over RUNS. Prints a Markdown table on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
events=${1:-1000000}
runs=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$root" && go build -o "$work/sealflow" ./cmd/sealflow)
(cd "$here" && go build -o "$work/benthosq" ./benthosq && go build -o "$work/rowcmp" ./rowcmp)
"$work/sealflow" nexmark gen --events "$events" --seed 1 > "$work/events.jsonl"

# cpu CMD...: runs CMD (stdout to /dev/null) and prints its user+system CPU seconds.
cpu() {
	local TIMEFORMAT='%3U %3S'
	local t
	t=$( { time "$@" > "$work/out" 2> "$work/err"; } 2>&1 ) || { cat "$work/err" >&2; return 1; }
	awk '{printf "%.3f\n", $1 + $2}' <<< "$t"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "| query | rows | sealflow CPU-s (process) | sealflow events/s per core | sealflow cpu_seconds (run summary, reading included) | Benthos CPU-s (process) | Benthos events/s per core | sealflow / Benthos per core (process) |"
echo "|---|---|---|---|---|---|---|---|"
for q in q0 q1 q2; do
	s=() b=() e=()
	for ((i = 0; i < runs; i++)); do
		s+=("$(cpu "$work/sealflow" nexmark run --query "$q" --input "$work/events.jsonl" --out "$work/$q.sealflow.jsonl")")
		e+=("$(sed -n 's/.*"cpu_seconds":\([0-9.e+-]*\).*/\1/p' "$work/out")")
		b+=("$(cpu "$work/benthosq" --query "$q" --input "$work/events.jsonl" --out "$work/$q.benthos.jsonl")")
		# Benthos appends to its output file: keep the last run's rows only.
		if ((i < runs - 1)); then rm -f "$work/$q.benthos.jsonl"; fi
	done
	rows=$("$work/rowcmp" "$work/$q.sealflow.jsonl" "$work/$q.benthos.jsonl" | awk '{print $2}')
	sm=$(printf '%s\n' "${s[@]}" | median)
	bm=$(printf '%s\n' "${b[@]}" | median)
	em=$(printf '%s\n' "${e[@]}" | median)
	awk -v q="$q" -v r="$rows" -v s="$sm" -v b="$bm" -v e="$em" -v n="$events" 'BEGIN {
		printf "| %s | %d | %.2f | %.0f k | %.2f | %.2f | %.0f k | %.1f× |\n", q, r, s, n / s / 1000, e, b, n / b / 1000, b / s }'
	rm -f "$work/$q.sealflow.jsonl" "$work/$q.benthos.jsonl"
done
