#!/usr/bin/env bash
# Runs a command in a session of its own and prints, when it ends, its wall time and the peaks, sampled
# every 0.2 s, of the memory of every process of that session (the Python driver, Spark's JVM and its
# Python workers) summed two ways: resident (RSS: a page shared by two processes, such as torch's
# libraries in forked workers or a JVM's forked child, counts twice) and proportional (PSS, Linux's
# /proc/<pid>/smaps_rollup: a shared page counts once, split between its processes; what the processes
# take of the machine's memory together). usage: docs/tools/peak_rss.sh <command> [args...]
set -uo pipefail
start=$(date +%s.%N)
setsid "$@" &
pid=$!
peak=0
peak_pss=0
while kill -0 "$pid" 2>/dev/null; do
  pids=$(ps -s "$pid" -o pid= 2>/dev/null)
  total=$(ps -s "$pid" -o rss= 2>/dev/null | awk '{s += $1} END {print s + 0}')
  pss=$(for p in $pids; do grep -s '^Pss:' "/proc/$p/smaps_rollup"; done | awk '{s += $2} END {print s + 0}')
  (( total > peak )) && peak=$total
  (( pss > peak_pss )) && peak_pss=$pss
  sleep 0.2
done
wait "$pid"
status=$?
end=$(date +%s.%N)
printf 'wall %.1f s, peak summed RSS %.0f MiB, peak summed PSS %.0f MiB, exit %d\n' \
  "$(echo "$end - $start" | bc)" "$(echo "$peak / 1024" | bc)" "$(echo "$peak_pss / 1024" | bc)" "$status" >&2
exit "$status"
