#!/usr/bin/env python3
"""Match latency spikes with the threads that held a core meanwhile.

    spikes.py TRACE.csv TIMEHIST.txt SERVER_PID GENERATOR_PID [THRESH_US]

TRACE.csv is `kefu-load --trace` (sent_us on CLOCK_MONOTONIC, latency_us);
TIMEHIST.txt is `perf sched timehist` of a `perf sched record -k mono` taken
during the run. Messages over THRESH_US (default 1000) sent within 20 ms of
each other form a spike; a spike is put down to the longest run (>= 300 µs)
of a thread other than the server's workers that overlaps it (from 2 ms
before its first message is sent to the last one's arrival), or to the
server's own long runs (its backlog) when there is no such run. Used by
scripts/spikes.sh.
"""
import bisect
import collections
import csv
import re
import sys

GAP_US = 20_000
LOOKBACK_US = 2_000
MIN_RUN_US = 300
LINE = re.compile(r'^\s*([\d.]+)\s+\[(\d+)\]\s+(\S.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$')
IDS = re.compile(r'\[(\d+)(?:/(\d+))?\]')


def load_runs(path):
    """(start_us, end_us, label-ish name, pid, run_us) per switch-out."""
    runs = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            t, _cpu, task, _wait, _delay, run = m.groups()
            ids = IDS.search(task)
            pid = (ids.group(2) or ids.group(1)) if ids else ''
            name = task[: ids.start()] if ids else task
            end = float(t) * 1e6
            run_us = float(run) * 1e3
            runs.append((end - run_us, end, name, pid, run_us))
    runs.sort()
    return runs


def label(name, pid, server, generator):
    if pid == server:
        return 'kefu event-log writer' if name == 'kefu-event-log' else None
    if pid == generator:
        return 'generator (kefu-load)'
    if name == '<idle>':
        return None
    if name.startswith('kdamond'):
        return 'kdamond (the host kernel\'s memory monitor)'
    if name.startswith(('kworker', 'ksoftirqd', 'rcu', 'migration')):
        return 'kernel threads'
    return 'other: ' + name


def main():
    trace, timehist, server, generator = sys.argv[1:5]
    thresh = float(sys.argv[5]) if len(sys.argv) > 5 else 1000.0
    runs = load_runs(timehist)
    if not runs:
        sys.exit('spikes.py: no scheduler events in ' + timehist)
    with open(trace) as f:
        rows = [(float(a), float(b)) for a, b in list(csv.reader(f))[1:]]
    first, last = runs[0][0], runs[-1][1]
    rows = [r for r in rows if first + LOOKBACK_US < r[0] and r[0] + r[1] < last]
    if not rows:
        sys.exit('spikes.py: no traced message falls inside the recording')
    spikes = []  # [first_sent, last_sent, messages, last_arrival]
    for sent, lat in rows:
        if lat <= thresh:
            continue
        if spikes and sent - spikes[-1][1] < GAP_US:
            s = spikes[-1]
            s[1] = sent
            s[2] += 1
            s[3] = max(s[3], sent + lat)
        else:
            spikes.append([sent, sent, 1, sent + lat])
    starts = [r[0] for r in runs]
    longest = max(r[4] for r in runs)
    by_spikes, by_msgs = collections.Counter(), collections.Counter()
    for sent, _last, n, arrival in spikes:
        lo = sent - LOOKBACK_US
        i = bisect.bisect_left(starts, lo - longest)
        best, own = None, False
        while i < len(runs) and runs[i][0] < arrival:
            start, end, name, pid, run_us = runs[i]
            i += 1
            if end < lo or run_us < MIN_RUN_US:
                continue
            lab = label(name, pid, server, generator)
            if lab is None:
                own = own or pid == server
                continue
            if best is None or run_us > best[0]:
                best = (run_us, lab)
        lab = best[1] if best else ('the server\'s own backlog' if own else 'nothing over 300 µs')
        by_spikes[lab] += 1
        by_msgs[lab] += n
    lat = sorted(r[1] for r in rows)
    over = sum(by_msgs.values())
    print(f'recorded window: {len(rows)} messages, p99 {lat[int(len(lat) * 0.99)]:.0f} µs, '
          f'{over} over {thresh:.0f} µs ({100 * over / len(rows):.2f} %) in {len(spikes)} spikes')
    print('| put down to | spikes | messages over the threshold | share |')
    print('|---|---:|---:|---:|')
    for lab, n in by_msgs.most_common():
        print(f'| {lab} | {by_spikes[lab]} | {n} | {100 * n / max(over, 1):.0f} % |')


if __name__ == '__main__':
    main()
