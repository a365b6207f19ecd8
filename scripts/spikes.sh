#!/usr/bin/env bash
# What delays the slowest buyer messages: a traced open-loop run with the
# scheduler recorded, then each latency spike matched with what held a core.
#
#   scripts/spikes.sh                # kefu at 15,000 msg/s
#   RATE=3000 scripts/spikes.sh
#   TARGET=relay scripts/spikes.sh   # the bare relay, same load
#
# kefu-load writes every measured message's send time (CLOCK_MONOTONIC) and
# latency (`--trace`); `perf sched record -k mono` records every context
# switch on the same clock for PERF_SECS in the middle of the run. Messages
# slower than THRESH_US that are sent within 20 ms of each other form one
# spike; each spike is put down to the longest run (at least 300 µs) of
# another thread that overlaps it: kefu's event-log writer, the generator,
# a kernel thread, ... or, when only kefu's own workers ran long, to kefu's
# backlog. A heuristic, not a proof: it says which neighbour was on a core
# while the messages waited. Needs `perf` with permission to record
# scheduler events, `jq` and `python3`; skips otherwise. Loopback only; the
# run is bounded (DUR seconds).
#
# Knobs: RATE (15000) DUR (8) PERF_SECS (3) THRESH_US (1000) BUYERS (4000)
# PIN (1: servers on CPU 0, generator on CPU 1) TARGET (kefu|relay)
# BIN (prebuilt kefu, kefu-load, kefu-relay; default: build release)
# MESSAGES (buyer texts; default ../shared/corpus/jddc_buyer_messages.txt
# when present, else kefu-load's built-in list).
set -uo pipefail
cd "$(dirname "$0")/.."
for tool in perf jq python3; do
  command -v "$tool" >/dev/null || { echo "spikes.sh: skipped, needs $tool" >&2; exit 0; }
done
if ! perf sched record -o /dev/null -- true >/dev/null 2>&1; then
  echo "spikes.sh: skipped, perf cannot record scheduler events here" >&2
  exit 0
fi
RATE=${RATE:-15000}; DUR=${DUR:-8}; PERF_SECS=${PERF_SECS:-3}; THRESH_US=${THRESH_US:-1000}
BUYERS=${BUYERS:-4000}; PIN=${PIN:-0}; TARGET=${TARGET:-kefu}; PORT=${PORT:-19497}
MESSAGES=${MESSAGES:-}
if [ -z "$MESSAGES" ] && [ -f ../shared/corpus/jddc_buyer_messages.txt ]; then
  MESSAGES=../shared/corpus/jddc_buyer_messages.txt
fi
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin kefu --bin kefu-load --bin kefu-relay || exit 1
  BIN=target/release
fi
SERVER_CPU=() GEN_CPU=()
[ "$PIN" = 1 ] && SERVER_CPU=(taskset -c 0) GEN_CPU=(taskset -c 1)

TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$TMP"; }
trap cleanup EXIT
TOK=(); for i in 1 2 3 4 5 6 7 8; do TOK+=(--agent-token "s1:a$i:tok-$i"); done
printf 'limits:\n  rate_per_sec: 1000000\n  rate_burst: 1000000\n  max_open_conversations: 1000000\n' > "$TMP/c.yaml"
cp -r phrases "$TMP/phrases"
if [ "$TARGET" = relay ]; then
  "${SERVER_CPU[@]}" "$BIN/kefu-relay" --listen "127.0.0.1:$PORT" "${TOK[@]}" > "$TMP/server.log" 2>&1 &
else
  "${SERVER_CPU[@]}" "$BIN/kefu" serve --listen "127.0.0.1:$PORT" --log warn --config "$TMP/c.yaml" \
    --data "$TMP/data" --phrases "$TMP/phrases" "${TOK[@]}" > "$TMP/server.log" 2>&1 &
fi
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
texts=()
[ -n "$MESSAGES" ] && texts=(--messages "$MESSAGES")
"${GEN_CPU[@]}" "$BIN/kefu-load" --url "ws://127.0.0.1:$PORT/ws" --mode "$TARGET" --shop s1 --agents 8 \
  --token-prefix tok- --server-pid "$SERVER" "${texts[@]}" --rate "$RATE" --buyers "$BUYERS" \
  --duration "$DUR" --reply-delay-ms 0 --trace "$TMP/trace.csv" > "$TMP/load.json" 2> "$TMP/load.log" &
LOAD=$!
PIDS+=("$LOAD")
# Connecting takes about a second; record in the middle of the sending.
sleep $(( (DUR - PERF_SECS) / 2 + 1 ))
perf sched record -k mono -o "$TMP/sched.data" -- sleep "$PERF_SECS" > /dev/null 2>&1
wait "$LOAD" || { echo "spikes.sh: kefu-load failed:" >&2; cat "$TMP/load.log" >&2; exit 1; }
perf sched timehist -i "$TMP/sched.data" > "$TMP/timehist.txt" 2> /dev/null
jq -r '"whole run: \(.throughput_mps|floor) msg/s, p50 \(.latency_from_send.p50_us|floor) µs, p99 \(.latency_from_send.p99_us|floor) µs, server \(.server_cpu_us_per_msg|floor) µs CPU per message"' "$TMP/load.json"
python3 scripts/spikes.py "$TMP/trace.csv" "$TMP/timehist.txt" "$SERVER" "$LOAD" "$THRESH_US"
