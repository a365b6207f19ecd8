//! Subcommands. Each parses nothing itself (clap did) and calls the library.

mod memory;
pub mod report;
pub mod serve;

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use kefu::matcher::{Matcher, Step};
use kefu::phrases::{Fill, Library};
use kefu::politeness::Checker;

/// Where phrase libraries live unless `--phrases` says otherwise.
pub const DEFAULT_PHRASES: &str = "phrases";

/// `kefu check [DIR]`: the directory comes from `--phrases` or
/// `KEFU_PHRASES` as for every other command; the positional `DIR` is kept
/// for the scripts that use it. See [`CheckArgs::settle`] for which wins.
#[derive(clap::Args)]
#[command(
    after_help = "DIR and --phrases name the same directory: DIR wins over KEFU_PHRASES, and \
    giving both DIR and a different --phrases is an error."
)]
pub struct CheckArgs {
    /// Phrase directory to check (the same as --phrases) [default: phrases].
    #[arg(value_name = "DIR")]
    pub positional_dir: Option<PathBuf>,
    #[command(flatten)]
    pub phrases: PhraseDir,
}

impl CheckArgs {
    /// Settles the directory to check: a positional `DIR` wins over
    /// `KEFU_PHRASES` and the default, and must agree with an explicit
    /// `--phrases` (two different directories on one command line is a
    /// mistake to point out, not to guess at). `phrases_source` is where
    /// clap took `--phrases` from.
    pub fn settle(&mut self, phrases_source: Option<ValueSource>) -> Result<(), String> {
        let Some(dir) = self.positional_dir.take() else {
            return Ok(());
        };
        if phrases_source == Some(ValueSource::CommandLine) && self.phrases.dir != dir {
            return Err(format!(
                "DIR {} and --phrases {} name different directories; give one of them",
                dir.display(),
                self.phrases.dir.display()
            ));
        }
        self.phrases.dir = dir;
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct PhraseDir {
    /// Phrase directory.
    #[arg(long = "phrases", env = "KEFU_PHRASES", default_value = DEFAULT_PHRASES)]
    pub dir: PathBuf,
}

#[derive(clap::Args)]
pub struct SuggestArgs {
    /// The buyer message (omit with --jsonl).
    pub text: Option<String>,
    /// Read one message per stdin line, write one JSON object per line.
    #[arg(long)]
    pub jsonl: bool,
    /// At most this many suggestions per message (1 or more).
    #[arg(long, default_value_t = 3, value_parser = parse_top)]
    pub top: usize,
    /// Shop name for the {shop} placeholder.
    #[arg(long, default_value = "本店")]
    pub shop: String,
    /// Agent name for the {agent} placeholder.
    #[arg(long, default_value = "")]
    pub agent: String,
    /// Also show how the message was ranked: every keyword, pattern and
    /// exclusion hit, negations, and each intent's score (with --jsonl: a
    /// `steps` list per line).
    #[arg(long)]
    pub explain: bool,
    #[command(flatten)]
    pub phrases: PhraseDir,
}

/// `--top N`: 0 would print "no suggestion" for every message, as if
/// nothing fitted.
fn parse_top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("give 1 or more suggestions to show".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of suggestions (1 or more)")),
    }
}

#[derive(clap::Args)]
pub struct LintArgs {
    /// The agent's draft.
    pub draft: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub phrases: PhraseDir,
}

#[derive(clap::Args)]
#[command(
    after_help = "A label that names no intent of the phrase libraries (a typo, a renamed \
    intent) is reported on stderr, once per label with the line of its first use; lines \
    labelled with it still count as misses, so the figures cover the whole file."
)]
pub struct EvalArgs {
    /// Labelled file: text<TAB>intent<TAB>other acceptable intents.
    pub file: PathBuf,
    /// Do not list the lines kefu got wrong.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub phrases: PhraseDir,
}

/// Loads the phrase directory with every problem in the error.
pub fn load(dir: &std::path::Path) -> anyhow::Result<Library> {
    Library::load_dir(dir).with_context(|| {
        format!(
            "cannot load the phrase libraries in {}; run `kefu check {}` for the list",
            dir.display(),
            dir.display()
        )
    })
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.phrases.dir;
    let lib = match Library::load_dir(dir) {
        Ok(lib) => lib,
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", errors.0.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    // A library that loads may still lack ids of the project's taxonomy:
    // `kefu serve` runs it (with a warning, so a shop's first small library
    // works), but a deploy checked with `kefu check` must not ship it
    // unnoticed.
    let missing = lib.missing_required();
    if !missing.is_empty() {
        for id in &missing {
            eprintln!(
                "{}: missing required intent `{id}`: the libraries must hold every id of the \
                 project's intent list (phrases/README.md); add it to the library with `stage: \
                 {}`",
                dir.display(),
                id.split('.').next().unwrap_or(id)
            );
        }
        eprintln!("{} problem(s) found", missing.len());
        return Ok(ExitCode::FAILURE);
    }
    let matcher = Matcher::new(&lib)?;
    writeln!(
        std::io::stdout(),
        "{}: ok, {} intents, {} keywords, {} greeting, {} holding, {} offline and {} transfer templates, {} politeness rules",
        dir.display(),
        matcher.intent_count(),
        matcher.keyword_count(),
        lib.templates.greeting.len(),
        lib.templates.holding.len(),
        lib.templates.offline.len(),
        lib.templates.transfer.len(),
        lib.politeness.negative.len() + lib.politeness.curt.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn suggest(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let lib = load(&args.phrases.dir)?;
    let matcher = Matcher::new(&lib)?;
    let fill = Fill {
        shop: &args.shop,
        agent: &args.agent,
        buyer: "",
    };
    if args.jsonl {
        let stdin = std::io::stdin().lock();
        let mut out = BufWriter::new(std::io::stdout().lock());
        for line in stdin.lines() {
            let line = line.context("cannot read standard input")?;
            /// Serialised as it stands, not through `serde_json::Value`:
            /// that turned each f32 score into an f64 (0.8 came out as
            /// 0.800000011920929) and sorted the keys.
            #[derive(serde::Serialize)]
            struct Out<'a> {
                text: &'a str,
                suggestions: &'a [kefu::matcher::Suggestion],
                #[serde(skip_serializing_if = "Option::is_none")]
                steps: Option<Vec<Step>>,
            }
            let suggestions = matcher.suggest(&line, args.top, &fill);
            let out_line = Out {
                text: &line,
                suggestions: &suggestions,
                steps: args.explain.then(|| matcher.explain(&line).1),
            };
            serde_json::to_writer(&mut out, &out_line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(text) = args.text else {
        anyhow::bail!("give a message to match, or --jsonl to read messages from stdin");
    };
    let suggestions = matcher.suggest(&text, args.top, &fill);
    let mut out = std::io::stdout().lock();
    if suggestions.is_empty() {
        writeln!(
            out,
            "no suggestion: nothing in the libraries fits this message"
        )?;
    }
    for (i, s) in suggestions.iter().enumerate() {
        writeln!(
            out,
            "{}. [{} {}] {}  score {:.2}  matched: {}",
            i + 1,
            s.stage.label(),
            s.stage,
            s.intent,
            s.score,
            if s.matched.is_empty() {
                "(pattern)".to_string()
            } else {
                s.matched.join(", ")
            }
        )?;
        writeln!(out, "   {}", s.reply)?;
    }
    if args.explain {
        let (norm, steps) = matcher.explain(&text);
        write_steps(&mut out, &norm, &steps)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kefu suggest --explain`: the ranking's steps, one a line, for a shop
/// finding out why a keyword did not count.
fn write_steps(out: &mut impl Write, norm: &str, steps: &[Step]) -> std::io::Result<()> {
    writeln!(out, "how it was ranked (the message normalised: {norm:?}):")?;
    if steps.is_empty() {
        writeln!(
            out,
            "  no keyword, pattern or exclusion of the libraries is in its words (text inside [..] tokens is data)"
        )?;
    }
    for step in steps {
        match step {
            Step::NoWords => writeln!(
                out,
                "  the message holds only punctuation and white space: nothing is ranked"
            )?,
            Step::InToken { text } => writeln!(
                out,
                "  {text}: inside a [..] data token, not the buyer's words: not counted"
            )?,
            Step::Swallowed {
                keyword,
                intents,
                by,
            } => writeln!(
                out,
                "  keyword {keyword} ({}): inside the longer keyword {by}, which is matched instead",
                intents.join(", ")
            )?,
            Step::Negated {
                keyword,
                negator,
                counted_as: Some(form),
            } => writeln!(out, "  keyword {keyword} after {negator}: counted as its negated form {form}")?,
            Step::Negated {
                keyword,
                negator,
                counted_as: None,
            } => writeln!(
                out,
                "  keyword {keyword} after {negator}: negated, not counted (add {negator}{keyword} as a keyword where it means something)"
            )?,
            Step::Exclusion {
                exclusion,
                intent,
                at_end: true,
            } => writeln!(out, "  exclusion {exclusion} of {intent} ends the message: {intent} is vetoed")?,
            Step::Exclusion {
                exclusion,
                intent,
                at_end: false,
            } => writeln!(
                out,
                "  exclusion {exclusion} of {intent}: vetoes the hits of {intent} it overlaps or that lie within {} characters of it",
                kefu::matcher::EXCLUDE_REACH
            )?,
            Step::ExclusionAsked { exclusion, intent } => writeln!(
                out,
                "  exclusion {exclusion} of {intent}: a finished state asked about, not applied"
            )?,
            Step::Vetoed { hit, intent } => writeln!(
                out,
                "  {hit}: not counted for {intent}, an exclusion of it is at or next to it"
            )?,
            Step::Keyword {
                keyword,
                intent,
                weight,
            } => writeln!(out, "  keyword {keyword} -> {intent} (weight {weight:.2})")?,
            Step::Pattern { matched, intent } => {
                writeln!(out, "  pattern matched {matched:?} -> {intent}")?
            }
            Step::Score {
                intent, verdict, ..
            } if verdict.starts_with("vetoed") => writeln!(out, "  {intent}: {verdict}")?,
            Step::Score {
                intent,
                priority,
                evidence,
                coverage,
                score,
                verdict,
            } => writeln!(
                out,
                "  {intent}: score {score:.3} = priority {priority:.2} x evidence {evidence:.2} x ({floor:.2} + {rest:.2} x coverage {coverage:.2}): {verdict}",
                floor = kefu::matcher::COVERAGE_FLOOR,
                rest = 1.0 - kefu::matcher::COVERAGE_FLOOR,
            )?,
        }
    }
    Ok(())
}

pub fn lint(args: LintArgs) -> anyhow::Result<ExitCode> {
    let lib = load(&args.phrases.dir)?;
    let result = Checker::new(&lib.politeness).check(&args.draft);
    // `writeln!`, not `println!`: a closed pipe (`kefu lint ... | head`) is
    // an error to report, not a panic (found by review).
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&result)?)?;
    } else if result.ok {
        writeln!(out, "ok: no negative or curt phrasing found")?;
    } else {
        for issue in &result.issues {
            let kind = match issue.kind {
                kefu::politeness::IssueKind::Negative => "negative",
                kefu::politeness::IssueKind::Curt => "curt",
            };
            writeln!(
                out,
                "{kind} phrasing `{}` at characters {}-{}",
                issue.phrase, issue.start, issue.end
            )?;
            if let Some(reason) = &issue.reason {
                writeln!(out, "  why: {reason}")?;
            }
            writeln!(out, "  try: {}", issue.rewrite)?;
        }
    }
    Ok(if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let lib = load(&args.phrases.dir)?;
    let matcher = Matcher::new(&lib)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let (examples, errors) = kefu::eval::parse(&text);
    for e in &errors {
        eprintln!("{}: {e} (skipped)", args.file.display());
    }
    let unknown = kefu::eval::unknown_labels(&examples, |id| lib.intent(id).is_some());
    for u in &unknown {
        eprintln!(
            "{}:{}: warning: label `{}` ({} line(s) in all) is not an intent of the libraries \
             in {}, so kefu can never match it: fix the label or add the intent",
            args.file.display(),
            u.first_line,
            u.label,
            u.lines,
            args.phrases.dir.display()
        );
    }
    let report = kefu::eval::evaluate(&matcher, &examples);
    std::io::stdout()
        .lock()
        .write_all(report.render(!args.quiet).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
