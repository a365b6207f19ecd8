//! `kefu events` and `kefu report`.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::parser::ValueSource;
use kefu::events::{self, Fields};
use kefu::matcher::Matcher;
use kefu::report::{self, GroupBy, Records, ReportOptions, ServiceWindow};
use kefu::store::{self, Query, Reader};
use time::UtcOffset;

use super::PhraseDir;

/// Where the event log lives unless `--data` says otherwise.
pub const DEFAULT_DATA: &str = "data";

#[derive(clap::Args)]
pub struct DataDir {
    /// Data directory holding the event log (events.db).
    #[arg(long = "data", env = "KEFU_DATA", default_value = DEFAULT_DATA, value_name = "DIR")]
    pub dir: PathBuf,
}

/// The report window and the shop's time zone.
#[derive(clap::Args)]
pub struct Window {
    /// First day (YYYY-MM-DD, shop time) or exact RFC 3339 time with its
    /// offset (2026-11-20T10:00:00+08:00).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day, included (YYYY-MM-DD, shop time), or exact RFC 3339 end
    /// with its offset (excluded).
    #[arg(long)]
    pub to: Option<String>,
    /// Today and the N-1 days before it, e.g. 7d or 30d.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub last: Option<String>,
    /// The shop's time zone as a UTC offset, e.g. +08:00 or -05:00.
    #[arg(long, env = "KEFU_TZ", default_value = "+08:00", value_parser = parse_tz, allow_hyphen_values = true)]
    pub tz: UtcOffset,
    /// Only this shop.
    #[arg(long)]
    pub shop: Option<String>,
}

fn parse_tz(s: &str) -> Result<UtcOffset, String> {
    report::parse_offset(s).map_err(|e| e.to_string())
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Window {
    /// `(from, to)` in Unix ms, `to` exclusive.
    fn bounds(&self, now: i64) -> anyhow::Result<(Option<i64>, Option<i64>)> {
        if let Some(last) = &self.last {
            let (f, t) = report::last_days(last, now, self.tz)?;
            return Ok((Some(f), Some(t)));
        }
        let bound = |flag: &str, s: Option<&str>, end: bool| {
            s.map(|s| report::parse_bound(s, self.tz, end))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        let from = bound("--from", self.from.as_deref(), false)?;
        let to = bound("--to", self.to.as_deref(), true)?;
        if let (Some(f), Some(t)) = (from, to) {
            anyhow::ensure!(f < t, "--from must come before --to");
        }
        Ok((from, to))
    }
}

#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(clap::Subcommand)]
pub enum EventsCommand {
    /// Write the log as JSON lines (one event per line) to standard output.
    Export(ExportArgs),
    /// Append the events of a JSON-lines file to the log.
    Import(ImportArgs),
    /// Delete the conversations whose newest event is before a date.
    ///
    /// Keeps the log, and the time live reports take, from growing forever.
    /// A conversation with any event from that date on is kept whole, so
    /// reports from the date on do not change. To keep what goes, export it
    /// first (`kefu events export --to DATE > old.jsonl`) and report the old
    /// months with `kefu report --events old.jsonl`.
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataDir,
    #[command(flatten)]
    pub window: Window,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// JSON-lines file (`-` for standard input).
    pub file: PathBuf,
    /// Import the good lines of a file that has bad ones. Without it a file
    /// with any bad line imports nothing: fixing the lines and importing
    /// again would otherwise double every event of the first attempt.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub data: DataDir,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Delete the conversations whose newest event is before the start of
    /// this day (YYYY-MM-DD, shop time) or before an exact RFC 3339 time
    /// with its offset; at least a day back.
    #[arg(long, value_name = "DATE")]
    pub before: String,
    #[command(flatten)]
    pub data: DataDir,
    /// The shop's time zone as a UTC offset, e.g. +08:00 or -05:00.
    #[arg(long, env = "KEFU_TZ", default_value = "+08:00", value_parser = parse_tz, allow_hyphen_values = true)]
    pub tz: UtcOffset,
    /// Only this shop's conversations.
    #[arg(long)]
    pub shop: Option<String>,
    /// Count what would be deleted and change nothing (runs beside a
    /// running kefu serve too).
    #[arg(long)]
    pub dry_run: bool,
    /// Afterwards, rewrite the log (SQLite VACUUM) to give the freed space
    /// back to the disk. Needs free disk about the size of the log and takes
    /// time (it copies every remaining event). Without it, new events reuse
    /// the freed space and the file does not shrink.
    #[arg(long, conflicts_with = "dry_run")]
    pub vacuum: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum By {
    Agent,
    Day,
    Stage,
    Shop,
}

impl From<By> for GroupBy {
    fn from(b: By) -> GroupBy {
        match b {
            By::Agent => GroupBy::Agent,
            By::Day => GroupBy::Day,
            By::Stage => GroupBy::Stage,
            By::Shop => GroupBy::Shop,
        }
    }
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Data directory holding the event log [default: data]; not with
    /// --events, which also overrides KEFU_DATA.
    #[arg(long, env = "KEFU_DATA")]
    pub data: Option<PathBuf>,
    /// Compute from a JSON-lines event file instead (`-` for standard input).
    #[arg(long)]
    pub events: Option<PathBuf>,
    #[command(flatten)]
    pub window: Window,
    /// One row per agent, day, stage or shop.
    #[arg(long)]
    pub by: Option<By>,
    /// A table to read, CSV for a spreadsheet, or JSON for a program.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Daily service hours in the shop's time zone; rounds starting outside
    /// are not counted.
    #[arg(long = "service-window", visible_alias = "window", id = "service_window", value_name = "HH:MM-HH:MM", env = "KEFU_SERVICE_WINDOW", default_value = "08:00-23:00", value_parser = parse_service_window)]
    pub window_hours: ServiceWindow,
    /// Response target in seconds: a round over it is a breach. Read as
    /// `kefu serve` reads it (decimals allowed, more than 0), so one
    /// KEFU_TARGET_SECS serves both (found by review: 7.5 was refused here).
    #[arg(long, env = "KEFU_TARGET_SECS", default_value_t = 30.0, value_parser = parse_target_secs, allow_negative_numbers = true)]
    pub target_secs: f64,
    /// Satisfaction rate the gold-medal check asks for (0-1).
    #[arg(long, default_value_t = report::DEFAULT_GOLD_THRESHOLD)]
    pub gold_threshold: f64,
    /// Phrase libraries, to rank buyer messages without a stage (--by stage).
    #[command(flatten)]
    pub phrases: PhraseDir,
}

/// A response target in seconds, as `kefu serve` takes it: more than 0.
fn parse_target_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("the response target must be more than 0 seconds".into()),
        Err(_) => Err("give a number of seconds such as 30 or 7.5".into()),
    }
}

impl ReportArgs {
    /// Settles where the events come from. `--data` and `--events` are two
    /// sources, so both on the command line is an error; but `KEFU_DATA`
    /// only sets a default (operators export it for `kefu serve`), so an
    /// explicit `--events` wins over it. `data_source` is where clap took
    /// `--data` from. (clap's own `conflicts_with` counts a value from the
    /// environment as given, hence this check in code.)
    pub fn settle(&mut self, data_source: Option<ValueSource>) -> Result<(), String> {
        if self.events.is_none() {
            return Ok(());
        }
        match data_source {
            Some(ValueSource::CommandLine) => {
                Err("--data and --events are two sources of events; give one of them".to_string())
            }
            _ => {
                self.data = None;
                Ok(())
            }
        }
    }
}

fn parse_service_window(s: &str) -> Result<ServiceWindow, String> {
    s.parse().map_err(|e: report::OptionError| e.to_string())
}

/// The bytes of an event file (`-`: standard input).
fn read_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Parses an event file with `parse`, reporting every bad line on stderr
/// with its number; when `skipping` them, the count at the end. Returns
/// what was parsed and how many lines were bad.
fn parse_reporting<T>(
    path: &Path,
    skipping: bool,
    parse: impl FnOnce(&mut dyn FnMut(events::BadLine)) -> T,
    count: impl Fn(&T) -> usize,
) -> (T, usize) {
    let name = path.display().to_string();
    let what = if skipping { "skipped" } else { "bad line" };
    let mut bad = 0usize;
    let parsed = parse(&mut |b| {
        bad += 1;
        eprintln!("{name}:{}: {what}: {}", b.line, b.error);
    });
    if bad > 0 && skipping {
        eprintln!(
            "{name}: {bad} bad line(s) skipped, {} event(s) read",
            count(&parsed)
        );
    }
    (parsed, bad)
}

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EventsCommand::Export(a) => export(a),
        EventsCommand::Import(a) => import(a),
        EventsCommand::Prune(a) => prune(a),
    }
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (from_ms, to_ms) = args.window.bounds(now_ms())?;
    let reader = Reader::open(&args.data.dir)?;
    let q = Query {
        from_ms,
        to_ms,
        shop: args.window.shop.clone(),
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let offset = args.window.tz;
    let n = reader.for_each(&q, |e| {
        out.write_all(e.to_json(offset).as_bytes())?;
        out.write_all(b"\n")
    })?;
    out.flush().context("cannot write to standard output")?;
    eprintln!("{n} event(s) exported");
    if let (0, Some(shop)) = (n, &q.shop) {
        eprintln!("note: no events of shop `{shop}` in this window (shop ids are case-sensitive)");
    }
    Ok(ExitCode::SUCCESS)
}

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_bytes(&args.file)?;
    let (events, bad) = parse_reporting(
        &args.file,
        args.skip_bad,
        |bad| events::parse_jsonl_bytes(&bytes, Fields::All, bad),
        Vec::len,
    );
    if bad > 0 && !args.skip_bad {
        // All or nothing: a half-imported file cannot be fixed and imported
        // again without doubling what went in the first time.
        anyhow::bail!(
            "{}: {bad} bad line(s), nothing imported: fix them and import the file again, \
             or pass --skip-bad to import its {} good event(s) only",
            args.file.display(),
            events.len()
        );
    }
    let n = store::import(&args.data.dir, &events)?;
    eprintln!("{n} event(s) imported into {}", args.data.dir.display());
    Ok(ExitCode::SUCCESS)
}

fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let before = report::parse_bound(&args.before, args.tz, false)
        .map_err(|e| anyhow::anyhow!("--before: {e}"))?;
    let cutoff = events::format_ts(before, args.tz);
    // `store::prune` refuses it too; here it is said in the shop's time.
    let latest = now_ms() - store::PRUNE_MIN_AGE.as_millis() as i64;
    anyhow::ensure!(
        before <= latest,
        "--before {}: the cutoff {cutoff} is later than a day ago ({}), and conversations of \
         the last day may still be open; give a date at least a day back (prune old months, \
         not today)",
        args.before.trim(),
        events::format_ts(latest, args.tz)
    );
    let dir = &args.data.dir;
    let out = store::prune(dir, before, args.shop.as_deref(), args.dry_run)?;
    let shop = match &args.shop {
        Some(s) => format!(" of shop `{s}`"),
        None => String::new(),
    };
    if args.dry_run {
        eprintln!(
            "dry run: {} event(s) of {} conversation(s){shop} with no event since {cutoff} \
             would be deleted, {} event(s) would remain; nothing changed",
            out.events, out.conversations, out.remaining
        );
    } else {
        eprintln!(
            "{} event(s) of {} conversation(s){shop} with no event since {cutoff} deleted \
             from {}, {} event(s) remain",
            out.events,
            out.conversations,
            dir.display(),
            out.remaining
        );
    }
    if args.vacuum {
        let (from, to) = store::vacuum(dir)?;
        eprintln!("vacuumed: the log went from {from} to {to} bytes");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let now = now_ms();
    let (from_ms, to_ms) = args.window.bounds(now)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.gold_threshold),
        "--gold-threshold is a fraction between 0 and 1, e.g. 0.8"
    );
    let by = args.by.map(GroupBy::from);
    let mut opts = ReportOptions {
        from_ms,
        to_ms,
        shop: args.window.shop.clone(),
        by,
        offset: args.window.tz,
        service_window: args.window_hours,
        target_ms: (args.target_secs * 1000.0).round() as i64,
        gold_threshold: args.gold_threshold,
        ..ReportOptions::default()
    };
    let bytes;
    let records = match &args.events {
        Some(file) => {
            bytes = read_bytes(file)?;
            parse_reporting(
                file,
                true,
                |bad| Records::from_jsonl(&bytes, bad),
                Records::len,
            )
            .0
        }
        None => {
            // A live log: rounds younger than the cap are not decided yet.
            opts.now_ms = Some(now);
            let dir = args.data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
            Reader::open(&dir)?.records(&Query {
                from_ms,
                to_ms,
                shop: opts.shop.clone(),
            })?
        }
    };
    if by == Some(GroupBy::Stage) && records.needs_ranking() {
        let lib = super::load(&args.phrases.dir).context(
            "buyer messages without a stage are ranked with the phrase libraries (--phrases DIR)",
        )?;
        opts.matcher = Some(Arc::new(Matcher::new(&lib)?));
    }
    if let Some(shop) = &opts.shop {
        let shops = records.shops();
        if !shops.contains(&shop.as_str()) {
            // An empty report for a mistyped shop looks like a quiet day.
            let seen = match (&args.events, shops.is_empty()) {
                (Some(file), false) => {
                    format!("; shops in {}: {}", file.display(), shops.join(", "))
                }
                _ => String::new(),
            };
            eprintln!(
                "note: no events of shop `{shop}` in this window (shop ids are case-sensitive){seen}"
            );
        }
    }
    let r = report::compute_records(&records, &opts);
    let text = match args.format {
        Format::Table => report::to_table(&r, by),
        Format::Csv => report::to_csv(&r, by),
        Format::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")?;
    // The process ends here: freeing a million records one by one would
    // only add time.
    std::mem::forget(records);
    Ok(ExitCode::SUCCESS)
}
