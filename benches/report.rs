//! `kefu report` over one million events: the target is under 2 s on the
//! 2-core development machine, end to end.
//!
//! Run: `cargo bench --bench report`. Besides criterion's figures this
//! leaves the million events in `target/report-bench/` (`events.jsonl` and
//! `data/events.db`) so the command itself can be timed:
//! `time target/release/kefu report --events target/report-bench/events.jsonl --by agent`.

use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kefu::events::{self, Event, Kind, Rating};
use kefu::report::{self, GroupBy, Records, ReportOptions};
use kefu::store::{self, Reader};

const EVENTS: usize = 1_000_000;

/// A small deterministic generator (no extra dependency for benchmarks).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const TEXTS: [&str; 6] = [
    "在吗，这款还有货吗",
    "什么时候发货呀",
    "我要退货，尺码不合适",
    "能开发票吗",
    "包邮吗",
    "快递到哪里了",
];
const STAGES: [&str; 3] = ["pre_sale", "in_sale", "after_sale"];

/// About a million events of three shops, 30 agents, 30 days: conversations
/// with a greeting, an assignment, buyer messages (sometimes several before
/// a reply), agent replies (some with a suggested intent), the odd holding
/// reply and rating.
fn generate() -> Vec<Event> {
    let mut rng = Lcg(7);
    let start = events::parse_ts("2026-10-01T00:00:00+08:00").unwrap();
    let mut out = Vec::with_capacity(EVENTS + 64);
    let mut c = 0u64;
    while out.len() < EVENTS {
        c += 1;
        let shop = format!("s{}", c % 3);
        let conv = format!("c{c}");
        let buyer = format!("b{}", rng.next(40_000));
        let agent = format!("a{}", rng.next(30));
        let mut t = start + rng.next(30 * 86_400_000) as i64;
        let ev = |t: i64, kind| Event::new(t, &shop, &conv, &buyer, kind);
        let mut b = ev(t, Kind::Buyer);
        b.text = Some(TEXTS[rng.next(6) as usize].into());
        b.stage = Some(STAGES[rng.next(3) as usize].into());
        out.push(b);
        let mut g = ev(t + 300, Kind::Bot);
        g.note = Some("greeting".into());
        g.text = Some("亲，欢迎光临，有什么可以帮您".into());
        out.push(g);
        let mut a = ev(t + 500, Kind::Assign);
        a.agent = Some(agent.as_str().into());
        out.push(a);
        for _ in 0..1 + rng.next(4) {
            t += 1000 + rng.next(120_000) as i64;
            for _ in 0..1 + rng.next(2) {
                let mut b = ev(t, Kind::Buyer);
                b.text = Some(TEXTS[rng.next(6) as usize].into());
                b.stage = Some(STAGES[rng.next(3) as usize].into());
                out.push(b);
                t += rng.next(5000) as i64;
            }
            let wait = rng.next(100) as i64 * rng.next(10) as i64 * 1000;
            if wait > 30_000 {
                let mut h = ev(t + 30_000, Kind::Bot);
                h.note = Some("holding".into());
                out.push(h);
            }
            t += wait;
            let mut r = ev(t, Kind::Agent);
            r.agent = Some(agent.as_str().into());
            r.text = Some("亲，您好，已经为您查询好了哦".into());
            if rng.next(3) > 0 {
                r.intent = Some("shipping_time".into());
            }
            out.push(r);
        }
        if rng.next(4) == 0 {
            let mut r = ev(t + 60_000, Kind::Rating);
            r.score = Some(Rating::ALL[rng.next(5) as usize]);
            out.push(r);
        }
    }
    out.truncate(EVENTS);
    out
}

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("report-bench")
}

fn bench(c: &mut Criterion) {
    let events = generate();
    let dir = bench_dir();
    let file = dir.join("events.jsonl");
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut w = BufWriter::new(std::fs::File::create(&file).unwrap());
        for e in &events {
            writeln!(w, "{}", e.to_json(events::DEFAULT_OFFSET)).unwrap();
        }
        w.flush().unwrap();
    }
    let _ = std::fs::remove_dir_all(&data);
    store::import(&data, &events).unwrap();

    let by_agent = ReportOptions {
        by: Some(GroupBy::Agent),
        ..ReportOptions::default()
    };
    let mut g = c.benchmark_group("report_1m");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("compute_total", |b| {
        b.iter(|| report::compute(black_box(&events), &ReportOptions::default()))
    });
    g.bench_function("compute_by_agent", |b| {
        b.iter(|| report::compute(black_box(&events), &by_agent))
    });
    g.bench_function("file_read_and_compute_by_agent", |b| {
        // What `kefu report --events` does.
        b.iter(|| {
            let bytes = std::fs::read(&file).unwrap();
            let records = Records::from_jsonl(&bytes, |bad| panic!("{bad}"));
            report::compute_records(&records, &by_agent)
        })
    });
    g.bench_function("sqlite_read_and_compute_by_agent", |b| {
        // What `kefu report --data` does.
        let reader = Reader::open(&data).unwrap();
        b.iter(|| reader.report(&by_agent).unwrap())
    });
    g.finish();

    // The writer's sustained rate: 100 000 events recorded at once (a queue
    // big enough to hold them all), then close() commits the rest.
    let mut g = c.benchmark_group("store");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let sample: Vec<Event> = events[..100_000].to_vec();
    let write_dir = dir.join("write");
    g.bench_function("record_and_close_100k", |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&write_dir);
            let options = store::StoreOptions {
                queue_capacity: sample.len(),
                ..store::StoreOptions::default()
            };
            let s = store::Store::open_with(&write_dir, options).unwrap();
            let h = s.handle();
            for e in &sample {
                h.record(e.clone());
            }
            s.close().unwrap();
            assert_eq!(h.dropped(), 0);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
