#!/usr/bin/env bash
# Runs a command in a session of its own and prints, when it ends, its wall time and the peak of the
# summed resident memory of every process of that session (the Python driver, Spark's JVM and its
# Python workers), sampled every 0.2 s: usage  docs/tools/peak_rss.sh <command> [args...]
set -uo pipefail
start=$(date +%s.%N)
setsid "$@" &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
  total=$(ps -s "$pid" -o rss= 2>/dev/null | awk '{s += $1} END {print s + 0}')
  (( total > peak )) && peak=$total
  sleep 0.2
done
wait "$pid"
status=$?
end=$(date +%s.%N)
printf 'wall %.1f s, peak summed RSS %.0f MiB, exit %d\n' "$(echo "$end - $start" | bc)" "$(echo "$peak / 1024" | bc)" "$status" >&2
exit "$status"
