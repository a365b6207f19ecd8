#!/usr/bin/env bash
# Two builds of kefu side by side: CPU per buyer message under the same load
# at the same time.
#
#   scripts/ab.sh DIR_A DIR_B     # each DIR holds release `kefu` and `kefu-load`
#
# Why side by side: this host's speed drifts by a third within minutes, so two
# builds measured one after the other differ by more than most changes are
# worth. Run at once, each with its own generator at a fixed open-loop RATE on
# its own loopback port, both builds see the same host. Each of ROUNDS rounds
# runs both twice, swapping the ports. Prints, per run, the server's CPU per
# buyer message (utime + stime over the measured window / messages, from
# /proc) and the p50 latency from send; then the mean of each build.
#
# Knobs: RATE (buyer messages/s per build, default 3000), LOADMODE (instead
# of the rate, e.g. "--max --inflight 64": each build at its maximum, the
# two sharing the cores), DUR (s, default 8),
# ROUNDS (default 2), BUYERS (default 2000), MESSAGES (a file of buyer texts;
# default ../shared/corpus/jddc_buyer_messages.txt when it exists, otherwise
# kefu-load's built-in texts). Everything runs on 127.0.0.1 and stops.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: scripts/ab.sh DIR_A DIR_B" >&2; exit 2; }
A=$1; B=$2
for d in "$A" "$B"; do
  [ -x "$d/kefu" ] && [ -x "$d/kefu-load" ] || { echo "ab.sh: $d needs kefu and kefu-load" >&2; exit 2; }
done
RATE=${RATE:-3000}; DUR=${DUR:-8}; ROUNDS=${ROUNDS:-2}; BUYERS=${BUYERS:-2000}
MESSAGES=${MESSAGES:-}
if [ -z "$MESSAGES" ] && [ -f ../shared/corpus/jddc_buyer_messages.txt ]; then
  MESSAGES=../shared/corpus/jddc_buyer_messages.txt
fi
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$TMP"; }
trap cleanup EXIT
TOK=(); for i in 1 2 3 4 5 6 7 8; do TOK+=(--agent-token "s1:a$i:tok-$i"); done

# run BIN_DIR PORT OUT: one server and its generator.
run() {
  local dir=$1 port=$2 out=$3 d
  d=$(mktemp -d -p "$TMP")
  # The agents here answer hundreds of buyers a second each.
  printf 'limits:\n  rate_per_sec: 1000000\n  rate_burst: 1000000\n  max_open_conversations: 1000000\n' > "$d/c.yaml"
  cp -r phrases "$d/phrases"
  "$dir/kefu" serve --listen "127.0.0.1:$port" --log warn --config "$d/c.yaml" --data "$d/data" \
    --phrases "$d/phrases" "${TOK[@]}" > "$d/log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  local texts=()
  [ -n "$MESSAGES" ] && texts=(--messages "$MESSAGES")
  "$dir/kefu-load" --url "ws://127.0.0.1:$port/ws" --mode kefu --shop s1 --agents 8 --token-prefix tok- \
    --server-pid "$pid" "${texts[@]}" ${LOADMODE:---rate $RATE} --buyers "$BUYERS" --duration "$DUR" \
    --reply-delay-ms 0 > "$out" 2> "$d/load.log"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}

echo "| round | build | server CPU per message, µs | p50 from send, µs | delivered/s |"
echo "|---:|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  for swap in 0 1; do
    if [ $swap = 0 ]; then pa=19601; pb=19602; else pa=19602; pb=19601; fi
    run "$A" $pa "$TMP/a.json" & ja=$!
    run "$B" $pb "$TMP/b.json" & jb=$!
    wait $ja $jb
    for x in a b; do
      name=$A; [ $x = b ] && name=$B
      jq -r --arg r "$r" --arg n "$name" \
        '"| \($r) | \($n) | \(.server_cpu_us_per_msg*10|floor/10) | \(.latency_from_send.p50_us|floor) | \(.throughput_mps|floor) |"' \
        "$TMP/$x.json" | tee -a "$TMP/rows"
    done
  done
done
for x in "$A" "$B"; do
  grep -F "| $x |" "$TMP/rows" | awk -F'|' -v n="$x" '{s+=$4; c++} END {printf "mean %s: %.1f µs per message over %d runs\n", n, s/c, c}'
done
