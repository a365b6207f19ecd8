//! The response clock with 100,000 rounds running: what each operation
//! costs, and how late alarms fire on real time.
//!
//! Two parts, both on [`kefu::clock::Clock`], the structure the server's
//! timer task drives:
//!
//! 1. **Cost per operation** with `--rounds` rounds open: starting a round,
//!    a buyer message joining an open round, ending a round by a reply, and
//!    popping a due alarm (ns per operation, mean of many).
//! 2. **Lateness on real time**: `--rounds` rounds start over `--spread`
//!    seconds (tokio runtime, real clock); one task sleeps until the earliest
//!    alarm and pops what is due, as `server::timer` does, while a traffic
//!    task keeps starting and ending other rounds under the same mutex.
//!    Lateness = when the alarm was popped − when it was due, in an HDR
//!    histogram per alarm kind. tokio's timer has 1 ms resolution, so
//!    lateness up to about 1 ms is the timer, not the clock.
//!
//! The end-to-end figure through the service (alarm frames reaching an
//! agent's socket) is `kefu-load --clocks` in `scripts/bench.sh`.
//!
//! Run: `cargo bench --bench clock` (options after `--`: `--rounds N`
//! default 100000, `--spread SECS` default 2, `--nudge SECS` default 3,
//! `--target SECS` default 4).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use kefu::clock::{Alarm, Clock, ClockSettings};
use tokio::sync::Notify;
use tokio::time::Instant;

struct Opts {
    rounds: u64,
    spread: f64,
    nudge: f64,
    target: f64,
}

fn opts() -> Opts {
    let mut o = Opts {
        rounds: 100_000,
        spread: 2.0,
        nudge: 3.0,
        target: 4.0,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<f64>().ok());
        match (args[i].as_str(), value) {
            ("--rounds", Some(v)) => o.rounds = v as u64,
            ("--spread", Some(v)) => o.spread = v,
            ("--nudge", Some(v)) => o.nudge = v,
            ("--target", Some(v)) => o.target = v,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn settings(o: &Opts) -> ClockSettings {
    ClockSettings {
        target: Duration::from_secs_f64(o.target),
        nudge: Duration::from_secs_f64(o.nudge),
        holding: None,
    }
}

/// Mean ns per call of `f` over `n` calls.
fn per_op(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let t = std::time::Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn costs(o: &Opts) {
    let now = Instant::now();
    let mut clock: Clock<u64> = Clock::new(settings(o));
    for k in 0..o.rounds {
        clock.buyer_message(&k, now + Duration::from_micros(k));
    }
    let n = 100_000u64;
    let base = o.rounds;
    let start = per_op(n, |i| {
        clock.buyer_message(&(base + i), now);
    });
    let join = per_op(n, |i| {
        clock.buyer_message(&(i % o.rounds), now);
    });
    let end = per_op(n, |i| {
        clock.agent_reply(&(base + i));
    });
    // Pop every alarm of the original rounds (two per round).
    let late = now + Duration::from_secs_f64(o.target * 2.0);
    let alarms = clock.alarms() as u64;
    let mut popped = 0u64;
    let pop = per_op(alarms, |_| {
        if clock.pop_due(late).is_some() {
            popped += 1;
        }
    });
    println!(
        "clock costs with {} rounds open: start a round {start:.0} ns, message joining a round \
         {join:.0} ns, end a round {end:.0} ns, pop a due alarm {pop:.0} ns ({popped} popped)",
        o.rounds
    );
}

fn report(name: &str, h: &Histogram<u64>, expected: u64) {
    println!(
        "{name:>6}: {}/{expected} fired; lateness µs p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3,
    );
}

async fn lateness(o: &Opts) {
    let clock = Arc::new(Mutex::new(Clock::<u64>::new(settings(o))));
    let wake = Arc::new(Notify::new());
    let done = Arc::new(Notify::new());

    // The timer task, shaped like server::timer: sleep until the earliest
    // alarm (or a wake-up), pop what is due, record how late it is.
    let timer = {
        let (clock, wake, done) = (clock.clone(), wake.clone(), done.clone());
        let expected = o.rounds;
        tokio::spawn(async move {
            let mut nudge = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let mut breach = nudge.clone();
            loop {
                let next = {
                    let now = Instant::now();
                    let mut c = clock.lock().unwrap();
                    while let Some((key, alarm, _, due)) = c.pop_due(now) {
                        if key >= expected {
                            continue; // the traffic task's rounds
                        }
                        let late = Instant::now().saturating_duration_since(due);
                        let h = if alarm == Alarm::Nudge {
                            &mut nudge
                        } else {
                            &mut breach
                        };
                        h.record(late.as_nanos().max(1) as u64).unwrap();
                    }
                    c.next_alarm()
                };
                if breach.len() == expected {
                    break;
                }
                let until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = wake.notified() => {}
                    _ = done.notified() => break,
                }
            }
            (nudge, breach)
        })
    };

    // Traffic: other conversations start and end rounds meanwhile.
    let traffic = {
        let clock = clock.clone();
        let base = o.rounds;
        tokio::spawn(async move {
            let mut k = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                let now = Instant::now();
                let mut c = clock.lock().unwrap();
                for _ in 0..20 {
                    c.buyer_message(&(base + k), now);
                    if k >= 100 {
                        c.agent_reply(&(base + k - 100));
                    }
                    k += 1;
                }
            }
        })
    };

    // Start the measured rounds, evenly over the spread.
    let t0 = Instant::now();
    let batches = (o.spread * 1000.0).max(1.0) as u64;
    let per_batch = o.rounds.div_ceil(batches);
    let mut started = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while started < o.rounds {
        tick.tick().await;
        let now = Instant::now();
        let mut c = clock.lock().unwrap();
        for _ in 0..per_batch.min(o.rounds - started) {
            c.buyer_message(&started, now);
            started += 1;
        }
        drop(c);
        wake.notify_one();
    }
    let open_for = t0.elapsed();
    let waiting = clock.lock().unwrap().waiting();
    println!(
        "started {} rounds in {:.2} s; {waiting} rounds open (with the traffic task's)",
        o.rounds,
        open_for.as_secs_f64()
    );
    let limit = Duration::from_secs_f64(o.target + o.spread + 5.0);
    let outcome = tokio::time::timeout(limit, timer).await;
    traffic.abort();
    match outcome {
        Ok(Ok((nudge, breach))) => {
            report("nudge", &nudge, o.rounds);
            report("breach", &breach, o.rounds);
        }
        _ => {
            done.notify_one();
            println!("the alarms did not all fire within {limit:?}");
        }
    }
}

fn main() {
    let o = opts();
    costs(&o);
    // The server's runtime: multi-threaded, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(lateness(&o));
}
