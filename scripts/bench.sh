#!/usr/bin/env bash
# kefu serve side by side with the bare relay (kefu-relay), on loopback only.
#
#   scripts/bench.sh                 # about 6 minutes on 2 cores
#   SOAK=1 scripts/bench.sh          # + 10,000 idle connections held 5 minutes
#   TIMERS=1 scripts/bench.sh        # + 100,000 running clocks: nudge/breach lateness
#   OVERLOAD=1 scripts/bench.sh      # + kefu offered 1.4 x its maximum: what a peak does
#   FALL=1 scripts/bench.sh          # + a light load right after a peak (about 3 minutes)
#
# Steps, each bounded in time, each on a freshly started relay and kefu with
# the same load (BUYERS buyers, AGENTS agents answering every message):
#   1. maximum throughput: closed loop, INFLIGHT messages in flight (each
#      delivery to an agent makes the next buyer send one);
#   2. latency, open loop, at half of kefu's maximum and at LIGHT_RATE, and
#      at the fractions SWEEP of kefu's maximum (default 0.25 0.33 0.4): where
#      each server's p99 crosses 1 ms, and how busy it is there; and the
#      relay alone at half of its own maximum: the latency target applied to
#      the bare transport on the same host;
#   3. resident memory per idle connection: IDLE greeted buyers from
#      127.0.0.1-4; and memory after a peak (PEAK=1, the default):
#      PEAK_BUYERS buyers at the half-maximum rate, conversations closing
#      5 s after their buyer leaves, RSS PEAK_WAIT s after the load;
#   CPU per message (server utime+stime over the measured window / messages)
#   comes with every run, and the results count the messages over 40 ms (the
#   Nagle target) over every latency run but the overload's. SOAK and TIMERS
#   add the soak and the clock runs; OVERLOAD an open-loop run of kefu at
#   OVERLOAD_X times its maximum: whether every message still arrives, who
#   is disconnected, and how many events the log dropped (from the server's
#   log). FALL: a fresh kefu takes a peak like the PEAK step's, then at once
#   a second shop's light load (FALL_RATE msg/s from 200 buyers for
#   FALL_SECS s), and the same light load on a fresh kefu without the peak:
#   what giving the peak's memory back (src/cmd/memory.rs) costs the buyers
#   who are still there.
# Results: $OUT/*.json (one JSON line per run) and $OUT/results.md (tables for
# BENCHMARKS.md). Every process started here is stopped on exit.
#
# Knobs (environment): BUYERS AGENTS DURATION INFLIGHT MAX_REPS LIGHT_RATE SWEEP IDLE HOLD
# PEAK PEAK_BUYERS PEAK_WAIT FALL FALL_RATE FALL_SECS
# SOAK SOAK_SECS TIMERS CLOCKS CLOCK_NUDGE CLOCK_TARGET OVERLOAD OVERLOAD_X REPLY_DELAY_MS
# PIN (1: servers on CPU 0, generator on CPU 1) OUT BIN (prebuilt binaries)
# MESSAGES (a file of buyer texts; default ../shared/corpus/jddc_buyer_messages.txt
# when present, read at run time; else the generator's built-in list).
#
# kefu runs with its per-connection rate limit raised (a config file in the
# temp dir): agents here answer hundreds of buyers a second each, which the
# default 20 messages/s per connection would refuse. Everything else is
# kefu's default: matching, suggestions, the clock and the event log on.
set -euo pipefail
cd "$(dirname "$0")/.."

BUYERS=${BUYERS:-4000}
AGENTS=${AGENTS:-8}
DURATION=${DURATION:-10}
INFLIGHT=${INFLIGHT:-64}
LIGHT_RATE=${LIGHT_RATE:-1000}
SWEEP=${SWEEP-0.25 0.33 0.4}
IDLE=${IDLE:-10000}
HOLD=${HOLD:-15}
PEAK=${PEAK:-1}
PEAK_BUYERS=${PEAK_BUYERS:-15000}
PEAK_WAIT=${PEAK_WAIT:-30}
FALL=${FALL:-0}
FALL_RATE=${FALL_RATE:-100}
FALL_SECS=${FALL_SECS:-75}
SOAK=${SOAK:-0}
SOAK_SECS=${SOAK_SECS:-300}
TIMERS=${TIMERS:-0}
OVERLOAD=${OVERLOAD:-0}
OVERLOAD_X=${OVERLOAD_X:-1.4}
CLOCKS=${CLOCKS:-100000}
CLOCK_NUDGE=${CLOCK_NUDGE:-60}
CLOCK_TARGET=${CLOCK_TARGET:-75}
PIN=${PIN:-0}
REPLY_DELAY_MS=${REPLY_DELAY_MS:-0}
MAX_REPS=${MAX_REPS:-3}
OUT=${OUT:-target/bench}
RELAY_PORT=${RELAY_PORT:-19471}
KEFU_PORT=${KEFU_PORT:-19472}
SHOP=s1

command -v jq >/dev/null || { echo "bench.sh: needs jq" >&2; exit 1; }
mkdir -p "$OUT"
if [ -z "${MESSAGES+x}" ]; then
  MESSAGES=""
  [ -f ../shared/corpus/jddc_buyer_messages.txt ] && MESSAGES=../shared/corpus/jddc_buyer_messages.txt
fi
MSG_FLAG=()
[ -n "$MESSAGES" ] && MSG_FLAG=(--messages "$MESSAGES")

# 10,000 connections need more than the usual 1,024 descriptors, in both
# the server and the generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE + 200)) ]; then
  echo "bench.sh: ulimit -n is $NOFILE, lowering IDLE to $((NOFILE - 200))" >&2
  IDLE=$((NOFILE - 200))
fi

# BIN=DIR uses binaries already built there (kefu, kefu-load, kefu-relay).
if [ -z "${BIN:-}" ]; then
  echo "== building (release)" >&2
  cargo build --release --quiet --bin kefu --bin kefu-load --bin kefu-relay
  BIN=target/release
fi

SERVER_CPU=() GEN_CPU=()
if [ "$PIN" = 1 ]; then
  SERVER_CPU=(taskset -c 0) GEN_CPU=(taskset -c 1)
fi

TOKENS=()
for i in $(seq 1 "$AGENTS"); do TOKENS+=(--agent-token "$SHOP:a$i:tok-$i"); done

DATA=$(mktemp -d -t kefu-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench.sh: server on port $port exited; see $OUT/*.log" >&2
      exit 1
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench.sh: nothing listens on $port after 10 s" >&2
  exit 1
}

cat >"$DATA/kefu-bench.yaml" <<'YAML'
limits:
  rate_per_sec: 1000000
  rate_burst: 1000000
  # The idle and clock runs open 10,000-100,000 conversations in one shop.
  max_open_conversations: 1000000
YAML
# The peak run's: conversations close 5 s after their buyer leaves (30
# minutes by default), so what stays resident afterwards is not theirs.
{ cat "$DATA/kefu-bench.yaml"; echo "  resume_window_secs: 5"; } >"$DATA/kefu-peak.yaml"

# start_server relay|kefu [extra kefu flags]: sets SERVER_PID (BENCH_KEFU_CONFIG:
# another settings file for kefu)
start_server() {
  local which=$1
  shift
  if [ "$which" = relay ]; then
    "${SERVER_CPU[@]}" "$BIN/kefu-relay" --listen "127.0.0.1:$RELAY_PORT" "${TOKENS[@]}" \
      >>"$OUT/relay.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$RELAY_PORT" "$SERVER_PID"
  else
    rm -rf "$DATA/kefu" && mkdir -p "$DATA/kefu"
    # A private copy of the phrases: an edit in the tree must not reload mid-run.
    rm -rf "$DATA/phrases" && cp -r phrases "$DATA/phrases"
    "${SERVER_CPU[@]}" "$BIN/kefu" serve --listen "127.0.0.1:$KEFU_PORT" --log warn \
      --config "${BENCH_KEFU_CONFIG:-$DATA/kefu-bench.yaml}" --data "$DATA/kefu" --phrases "$DATA/phrases" "${TOKENS[@]}" "$@" \
      >>"$OUT/kefu.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$KEFU_PORT" "$SERVER_PID"
  fi
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

port_of() { if [ "$1" = relay ]; then echo "$RELAY_PORT"; else echo "$KEFU_PORT"; fi; }

# load NAME WHICH ARGS...: runs the generator, keeps its JSON line in $OUT/NAME.json
load() {
  local name=$1 which=$2
  shift 2
  echo "== $name" >&2
  "${GEN_CPU[@]}" "$BIN/kefu-load" --url "ws://127.0.0.1:$(port_of "$which")/ws" --mode "$which" \
    --shop "$SHOP" --agents "$AGENTS" --token-prefix tok- --server-pid "$SERVER_PID" \
    "${MSG_FLAG[@]}" "$@" >"$OUT/$name.json"
}

j() { jq -r "$2" "$OUT/$1.json"; }
fmt() { awk -v v="$1" -v d="${2:-1}" 'BEGIN { if (v == "" || v == "null") print "n/a"; else printf "%.*f", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.*f", d, a / b }'; }

: >"$OUT/relay.log"
: >"$OUT/kefu.log"

# pair NAME ARGS...: the same load on a fresh relay, then on a fresh kefu.
pair() {
  local name=$1
  shift
  for which in relay kefu; do
    start_server "$which"
    load "$which-$name" "$which" "$@"
    stop_server
  done
}

# 1. Maximum throughput (closed loop, INFLIGHT messages in flight), MAX_REPS
# pairs one after the other: the host's speed drifts by a third within
# minutes, so one pair alone can flatter or wrong either side. The pair with
# the median ratio becomes relay-max / kefu-max for the tables below.
PAIRS=()
for r in $(seq 1 "$MAX_REPS"); do
  pair "max$r" --max --inflight "$INFLIGHT" --buyers "$BUYERS" --duration "$DURATION" \
    --reply-delay-ms "$REPLY_DELAY_MS"
  PAIRS+=("$(awk -v a="$(j "kefu-max$r" .throughput_mps)" -v b="$(j "relay-max$r" .throughput_mps)" \
    'BEGIN { printf "%.4f", a / b }') $r")
done
MEDIAN=$(printf '%s\n' "${PAIRS[@]}" | sort -n | awk -v n="$MAX_REPS" 'NR == int((n + 1) / 2) { print $2 }')
cp "$OUT/kefu-max$MEDIAN.json" "$OUT/kefu-max.json"
cp "$OUT/relay-max$MEDIAN.json" "$OUT/relay-max.json"
KEFU_MAX=$(j kefu-max .throughput_mps)
RATE=$(awk -v m="$KEFU_MAX" 'BEGIN { r = int(m / 2 / 100) * 100; if (r < 100) r = 100; print r }')

# 2. Latency at half of kefu's maximum, and under a light load, open loop.
pair half --rate "$RATE" --buyers "$BUYERS" --duration "$DURATION" --reply-delay-ms "$REPLY_DELAY_MS"
pair light --rate "$LIGHT_RATE" --buyers "$BUYERS" --duration "$DURATION" \
  --reply-delay-ms "$REPLY_DELAY_MS"
# The p99 at an open-loop rate follows how busy the server's share of the
# cores is, for kefu and the relay alike; the sweep shows where it crosses.
SWEEP_RATES=()
for f in $SWEEP; do
  rate=$(awk -v m="$KEFU_MAX" -v f="$f" 'BEGIN { r = int(m * f / 100) * 100; if (r < 100) r = 100; print r }')
  # Two fractions that round to one rate (a small maximum) run once.
  case " ${SWEEP_RATES[*]:-} " in *" $rate "*) continue ;; esac
  SWEEP_RATES+=("$rate")
  pair "sweep$rate" --rate "$rate" --buyers "$BUYERS" --duration "$DURATION" \
    --reply-delay-ms "$REPLY_DELAY_MS"
done

# The latency target (p99 under 1 ms at half the maximum) applied to the
# bare transport: the relay at half of its own maximum.
RELAY_RATE=$(awk -v m="$(j relay-max .throughput_mps)" 'BEGIN { r = int(m / 2 / 100) * 100; if (r < 100) r = 100; print r }')
start_server relay
load relay-ownhalf relay --rate "$RELAY_RATE" --buyers "$BUYERS" --duration "$DURATION" \
  --reply-delay-ms "$REPLY_DELAY_MS"
stop_server

# 3. Memory per idle connection.
pair idle --idle-connections "$IDLE" --source-ips 4 --hold "$HOLD" --sample-secs 5 --agents 1

rss_of() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
if [ "$PEAK" = 1 ]; then
  BENCH_KEFU_CONFIG="$DATA/kefu-peak.yaml" start_server kefu
  PEAK_RSS_BEFORE=$(rss_of "$SERVER_PID")
  load kefu-peak kefu --rate "$RATE" --buyers "$PEAK_BUYERS" --duration "$DURATION" \
    --reply-delay-ms "$REPLY_DELAY_MS"
  sleep "$PEAK_WAIT"
  PEAK_RSS_AFTER=$(rss_of "$SERVER_PID")
  stop_server
fi

# A falling load: the light load's agents are a second shop's, so their
# welcome does not carry the peak's thousands of open conversations.
if [ "$FALL" = 1 ]; then
  FALL_TOKENS=()
  for i in $(seq 1 "$AGENTS"); do FALL_TOKENS+=(--agent-token "s2:a$i:ftok-$i"); done
  for before in peak none; do
    BENCH_KEFU_CONFIG="$DATA/kefu-peak.yaml" start_server kefu "${FALL_TOKENS[@]}"
    if [ "$before" = peak ]; then
      load kefu-fall-peak kefu --rate "$RATE" --buyers "$PEAK_BUYERS" --duration "$DURATION" \
        --reply-delay-ms "$REPLY_DELAY_MS"
    fi
    load "kefu-fall-after-$before" kefu --shop s2 --token-prefix ftok- --rate "$FALL_RATE" \
      --buyers 200 --duration "$FALL_SECS" --reply-delay-ms "$REPLY_DELAY_MS"
    stop_server
  done
fi

if [ "$SOAK" = 1 ]; then
  start_server kefu
  load kefu-soak kefu --idle-connections "$IDLE" --source-ips 4 --hold "$SOAK_SECS" \
    --sample-secs 10 --agents 1
  stop_server
fi

# 4. Timer lateness with CLOCKS running clocks: buyers send one message and
# leave (their conversations stay for a resume, clocks running), agents never
# answer; nudges and breaches are timed at the agents.
if [ "$TIMERS" = 1 ]; then
  start_server kefu --nudge-secs "$CLOCK_NUDGE" --target-secs "$CLOCK_TARGET" --holding-secs 0
  load kefu-clocks kefu --clocks "$CLOCKS" --source-ips 8 --connect-concurrency 64 \
    --nudge-secs "$CLOCK_NUDGE" --target-secs "$CLOCK_TARGET"
  stop_server
fi

# 5. Beyond the maximum: kefu offered OVERLOAD_X times its maximum, open
# loop, with time to drain the backlog afterwards.
if [ "$OVERLOAD" = 1 ]; then
  OVER_RATE=$(awk -v m="$KEFU_MAX" -v x="$OVERLOAD_X" 'BEGIN { print int(m * x / 100) * 100 }')
  log_from=$(($(wc -l <"$OUT/kefu.log") + 1))
  start_server kefu
  load kefu-overload kefu --rate "$OVER_RATE" --buyers "$BUYERS" --duration "$DURATION" --drain 20 \
    --reply-delay-ms "$REPLY_DELAY_MS"
  # The generator stops reading its agents as it shuts down, and the server
  # may drop one for that in its last milliseconds: slow readers count until
  # the whole second before the one the run ended in (1-2 s before its end;
  # the log's UTC times compare as text).
  over_cut=$(date -u -d "@$(($(date -u +%s) - 1))" +%Y-%m-%dT%H:%M:%S)
  stop_server
  # The server reports the events its log dropped when it closes.
  OVER_DROPPED=$(tail -n "+$log_from" "$OUT/kefu.log" | { grep -o 'dropped=[0-9]*' || true; } | tail -1 | cut -d= -f2)
  OVER_KICKED=$(tail -n "+$log_from" "$OUT/kefu.log" |
    awk -v cut="$over_cut" '/does not read its messages/ && $1 < cut { n++ } END { print n + 0 }')
fi

# Tables.
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "Machine: $(nproc) cores ($cpu_model), $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -r), $(rustc --version | cut -d' ' -f1-2); $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Load: $BUYERS buyers, $AGENTS agents of shop $SHOP; ${DURATION} s runs (1 s warm-up); agents answer after ${REPLY_DELAY_MS} ms; texts: ${MESSAGES:-built-in list}; PIN=$PIN; each run on a freshly started server."
  echo
  echo "| Figure | kefu-relay | kefu serve | kefu / relay |"
  echo "|---|---:|---:|---:|"
  rm_=$(j relay-max .throughput_mps)
  km_=$(j kefu-max .throughput_mps)
  echo "| Max throughput, buyer messages/s ($INFLIGHT in flight; the pair with the median ratio of $MAX_REPS) | $(fmt "$rm_" 0) | $(fmt "$km_" 0) | **$(ratio "$km_" "$rm_" 3)** |"
  echo "| Server CPU per buyer message at max, µs | $(fmt "$(j relay-max .server_cpu_us_per_msg)") | $(fmt "$(j kefu-max .server_cpu_us_per_msg)") | $(ratio "$(j kefu-max .server_cpu_us_per_msg)" "$(j relay-max .server_cpu_us_per_msg)") |"
  echo "| Server CPU per buyer message at $RATE/s, µs | $(fmt "$(j relay-half .server_cpu_us_per_msg)") | $(fmt "$(j kefu-half .server_cpu_us_per_msg)") | $(ratio "$(j kefu-half .server_cpu_us_per_msg)" "$(j relay-half .server_cpu_us_per_msg)") |"
  echo "| Server CPU at max, % of one core | $(fmt "$(j relay-max .server_cpu_pct)" 0) | $(fmt "$(j kefu-max .server_cpu_pct)" 0) | |"
  echo "| Generator CPU at max, % of one core | $(fmt "$(j relay-max .generator_cpu_pct)" 0) | $(fmt "$(j kefu-max .generator_cpu_pct)" 0) | |"
  echo "| Other processes at max, % of one core | $(fmt "$(j relay-max .other_cpu_pct)" 0) | $(fmt "$(j kefu-max .other_cpu_pct)" 0) | |"
  echo "| Max run: errors+disconnects / missing | $(j relay-max '.error_frames + .disconnects') / $(j relay-max .missing) | $(j kefu-max '.error_frames + .disconnects') / $(j kefu-max .missing) | |"
  for r in $(seq 1 "$MAX_REPS"); do
    echo "| Max throughput, pair $r of $MAX_REPS | $(fmt "$(j "relay-max$r" .throughput_mps)" 0) | $(fmt "$(j "kefu-max$r" .throughput_mps)" 0) | $(ratio "$(j "kefu-max$r" .throughput_mps)" "$(j "relay-max$r" .throughput_mps)" 3) |"
  done
  echo "| Idle connection, bytes of server RSS each | $(fmt "$(j relay-idle .bytes_per_conn)" 0) | $(fmt "$(j kefu-idle .bytes_per_conn)" 0) | $(ratio "$(j kefu-idle .bytes_per_conn)" "$(j relay-idle .bytes_per_conn)") |"
  echo
  for load in half light; do
    r=$(j "kefu-$load" .rate_offered)
    echo "Latency, buyer \`message\` → agent receives \`buyer_message\` (kefu: with suggestions), open loop at $(fmt "$r" 0) msg/s, µs:"
    echo
    echo "| Server | from | p50 | p99 | p99.9 | max | delivered/s | missing | errors | server CPU % | other CPU % |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for which in relay kefu; do
      for from in send due; do
        f=".latency_from_$from"
        echo "| $which | $from | $(fmt "$(j "$which-$load" "$f.p50_us")") | $(fmt "$(j "$which-$load" "$f.p99_us")") | $(fmt "$(j "$which-$load" "$f.p999_us")") | $(fmt "$(j "$which-$load" "$f.max_us")") | $(fmt "$(j "$which-$load" .throughput_mps)" 0) | $(j "$which-$load" .missing) | $(j "$which-$load" '.error_frames + .disconnects') | $(fmt "$(j "$which-$load" .server_cpu_pct)" 0) | $(fmt "$(j "$which-$load" .other_cpu_pct)" 0) |"
      done
    done
    echo
  done
  if [ "${#SWEEP_RATES[@]}" -gt 0 ]; then
    echo "Latency against load, open loop, from send, µs (server CPU: % of one core; the half-maximum and light runs above included):"
    echo
    echo "| msg/s | share of kefu's maximum | relay p50 | relay p99 | relay CPU % | kefu p50 | kefu p99 | kefu CPU % |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    for run in light "${SWEEP_RATES[@]/#/sweep}" half; do
      r=$(j "kefu-$run" .rate_offered)
      echo "| $(fmt "$r" 0) | $(ratio "$r" "$KEFU_MAX") | $(fmt "$(j "relay-$run" .latency_from_send.p50_us)" 0) | $(fmt "$(j "relay-$run" .latency_from_send.p99_us)" 0) | $(fmt "$(j "relay-$run" .server_cpu_pct)" 0) | $(fmt "$(j "kefu-$run" .latency_from_send.p50_us)" 0) | $(fmt "$(j "kefu-$run" .latency_from_send.p99_us)" 0) | $(fmt "$(j "kefu-$run" .server_cpu_pct)" 0) |"
    done
    echo
  fi
  f=.latency_from_send
  echo "The relay at half of its own maximum ($(fmt "$(j relay-ownhalf .rate_offered)" 0) msg/s, the same target applied to the transport alone), from send, µs: p50 $(fmt "$(j relay-ownhalf "$f.p50_us")" 0), p99 **$(fmt "$(j relay-ownhalf "$f.p99_us")" 0)**, p99.9 $(fmt "$(j relay-ownhalf "$f.p999_us")" 0), max $(fmt "$(j relay-ownhalf "$f.max_us")" 0); relay CPU $(fmt "$(j relay-ownhalf .server_cpu_pct)" 0) %, generator $(fmt "$(j relay-ownhalf .generator_cpu_pct)" 0) % of one core (kefu at half of its maximum: generator $(fmt "$(j kefu-half .generator_cpu_pct)" 0) %)."
  echo
  # The Nagle target: no message over 40 ms. Every run of this script that
  # measured latency counts, but the overload's, whose backlog is seconds.
  LAT_RUNS=()
  for r in $(seq 1 "$MAX_REPS"); do LAT_RUNS+=("max$r"); done
  LAT_RUNS+=(half light)
  for rate in "${SWEEP_RATES[@]}"; do LAT_RUNS+=("sweep$rate"); done
  KEFU_ONLY=()
  [ "$PEAK" = 1 ] && KEFU_ONLY+=(peak)
  [ "$FALL" = 1 ] && KEFU_ONLY+=(fall-peak fall-after-peak fall-after-none)
  over40() {
    local which=$1 n=0 over=0 worst=0 run
    shift
    for run in "$@"; do
      n=$((n + 1))
      over=$((over + $(j "$which-$run" .latency_from_send.n_ge_40ms)))
      worst=$(awk -v a="$worst" -v b="$(j "$which-$run" .latency_from_send.max_us)" 'BEGIN { print (b > a) ? b : a }')
    done
    echo "$which $over in $n runs (largest $(fmt "$(awk -v w="$worst" 'BEGIN { print w / 1000 }')") ms)"
  }
  echo "Messages over 40 ms from send (the Nagle target), every latency run of this script but the overload: $(over40 relay "${LAT_RUNS[@]}" ownhalf); $(over40 kefu "${LAT_RUNS[@]}" "${KEFU_ONLY[@]}")."
  echo
  echo "Idle connections: greeted buyers from 4 source addresses (127.0.0.1-4), 1 agent, held ${HOLD} s:"
  echo
  echo "| Server | open | RSS before, KiB | RSS with them, KiB | bytes per connection | RSS min / max over the hold, KiB |"
  echo "|---|---:|---:|---:|---:|---:|"
  for which in relay kefu; do
    echo "| $which | $(j "$which-idle" .alive_at_end)/$(j "$which-idle" .connections) | $(j "$which-idle" .rss_before_kib) | $(j "$which-idle" .rss_open_kib) | $(fmt "$(j "$which-idle" .bytes_per_conn)" 0) | $(j "$which-idle" .rss_min_kib) / $(j "$which-idle" .rss_max_kib) |"
  done
  if [ "$PEAK" = 1 ]; then
    echo
    echo "Memory after a peak: kefu with $PEAK_BUYERS buyers at $(fmt "$(j kefu-peak .rate_offered)" 0) msg/s for ${DURATION} s ($(j kefu-peak .delivered) messages delivered), conversations closing 5 s after their buyer left: RSS $PEAK_RSS_BEFORE KiB before, $(j kefu-peak .server_rss_kib) KiB at the end of the load, **$PEAK_RSS_AFTER KiB** ${PEAK_WAIT} s later."
  fi
  if [ "$FALL" = 1 ]; then
    echo
    echo "A falling load: a fresh kefu takes a peak ($(fmt "$(j kefu-fall-peak .rate_offered)" 0) msg/s from $PEAK_BUYERS buyers for ${DURATION} s, RSS $(j kefu-fall-peak .server_rss_kib) KiB at its end), then at once a second shop's $FALL_RATE msg/s from 200 buyers for ${FALL_SECS} s; the same light load on a fresh kefu without the peak. Latency of the light load from send, µs:"
    echo
    echo "| Before the light load | p50 | p99 | p99.9 | max | over 40 ms | RSS at its end, KiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for before in peak none; do
      f="kefu-fall-after-$before"
      echo "| $( [ "$before" = peak ] && echo "the peak" || echo "no peak") | $(fmt "$(j "$f" .latency_from_send.p50_us)" 0) | $(fmt "$(j "$f" .latency_from_send.p99_us)" 0) | $(fmt "$(j "$f" .latency_from_send.p999_us)" 0) | $(fmt "$(j "$f" .latency_from_send.max_us)" 0) | $(j "$f" .latency_from_send.n_ge_40ms) | $(j "$f" .server_rss_kib) |"
    done
  fi
  if [ "$SOAK" = 1 ]; then
    echo
    echo "Soak: kefu holding $(j kefu-soak .connected) idle connections for ${SOAK_SECS} s, RSS sampled every 10 s: $(j kefu-soak .rss_open_kib) KiB after opening, min $(j kefu-soak .rss_min_kib) / max $(j kefu-soak .rss_max_kib) KiB during the hold, $(j kefu-soak .rss_end_kib) KiB at the end; $(j kefu-soak .alive_at_end) connections still open. Samples (KiB): $(j kefu-soak '.rss_samples_kib | map(tostring) | join(", ")')."
  fi
  if [ "$TIMERS" = 1 ]; then
    echo
    echo "Clocks: $(j kefu-clocks .started) rounds started in $(fmt "$(j kefu-clocks .open_s)") s by buyers who then left ($(j kefu-clocks .nudged_before_all_open) nudged before the last one started); nudge at ${CLOCK_NUDGE} s, breach at ${CLOCK_TARGET} s. Lateness = the alarm's arrival at the agent − when it was due, µs. Three references: the alarm's own \`at\` (the server's due time, truncated to the millisecond, so up to 1 ms high), and due times derived from the round's start, which lies between the buyer's send and the \`buyer_message\`'s arrival at the agent (upper and lower bounds; under the connection churn these are ms apart):"
    echo
    echo "| Alarm | fired | counted from | p50 | p99 | p99.9 | max |"
    echo "|---|---:|---|---:|---:|---:|---:|"
    for a in nudge breach; do
      count=nudges
      [ "$a" = breach ] && count=breaches
      for from in at sent arrival; do
        f=".${a}_lateness"
        label="message sent"
        [ "$from" = arrival ] && f=".${a}_lateness_from_arrival" label="buyer_message arrival"
        [ "$from" = at ] && f=".${a}_lateness_from_at" label="its own \`at\` (ms)"
        echo "| $a | $(j kefu-clocks ".$count")/$(j kefu-clocks .started) | $label | $(fmt "$(j kefu-clocks "$f.p50_us")") | $(fmt "$(j kefu-clocks "$f.p99_us")") | $(fmt "$(j kefu-clocks "$f.p999_us")") | $(fmt "$(j kefu-clocks "$f.max_us")") |"
      done
    done
    echo
    echo "Server RSS with every round open: $(j kefu-clocks .rss_open_kib) KiB ($(fmt "$(j kefu-clocks .bytes_per_waiting_conversation)" 0) bytes per waiting conversation)."
  fi
  if [ "$OVERLOAD" = 1 ]; then
    echo
    echo "Beyond the maximum: kefu offered $OVER_RATE msg/s (${OVERLOAD_X} x its maximum) for ${DURATION} s, open loop, then 20 s to drain: $(j kefu-overload .delivered) of $(j kefu-overload .sent) buyer messages reached an agent, $(fmt "$(j kefu-overload .throughput_mps)" 0) msg/s delivered in the measured window; $(j kefu-overload .disconnects) agent disconnects seen by the generator, ${OVER_KICKED} connections dropped as slow readers by the server during the run, ${OVER_DROPPED:-0} events dropped by the event log; latency from the schedule p50 $(fmt "$(j kefu-overload .latency_from_due.p50_us)" 0) µs, p99 $(fmt "$(j kefu-overload .latency_from_due.p99_us)" 0) µs (the backlog a peak builds); server RSS $(j kefu-overload .server_rss_kib) KiB at the end."
  fi
} | tee "$OUT/results.md"
echo "bench.sh: JSON per run in $OUT/*.json, tables in $OUT/results.md" >&2
