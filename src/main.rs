//! The `kefu` command: parses the command line and calls the library.

mod cmd;

/// mimalloc rather than glibc's allocator: a buyer message makes a few
/// dozen short-lived allocations (frames, JSON, the event) on two worker
/// threads. At 6,000 messages/s this took the server's CPU per message
/// from 161-169 µs to 145-155 µs, and its p50 latency from 200-310 µs to
/// 130-180 µs (docs/benchmarks-history.md, "What changed"). The relay and the load generator use it too,
/// so the comparison stays like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kefu",
    version,
    about = "客服 assistant: reply suggestions, auto-greeting, response clock and reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every phrase library and report every problem (exit 0 only when clean).
    Check(cmd::CheckArgs),
    /// Rank reply suggestions for a buyer message (or JSON lines from stdin).
    Suggest(cmd::SuggestArgs),
    /// Check an agent's draft for negative or curt phrasing.
    Lint(cmd::LintArgs),
    /// Measure top-1/top-3 accuracy on a labelled TSV file.
    Eval(cmd::EvalArgs),
    /// Run the WebSocket service.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Work with the event log.
    Events(cmd::report::EventsArgs),
    /// Response-time and satisfaction reports.
    Report(cmd::report::ReportArgs),
}

impl Cli {
    /// Parses `args` as clap does, then settles what clap's attributes
    /// cannot say: what to do with a value that came from a `KEFU_*`
    /// variable rather than a flag (a default, which an explicit flag of
    /// another kind overrides; a list, which only the variable splits on
    /// commas).
    fn try_parse_settled<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command()
            .try_get_matches_from(&args)
            .map_err(|e| name_the_variable(e, &args))?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let Some((name, sub)) = matches.subcommand() {
            cli.command
                .settle(sub)
                .map_err(|message| subcommand_error(name, message))?;
        }
        Ok(cli)
    }
}

impl Command {
    fn settle(&mut self, m: &ArgMatches) -> Result<(), String> {
        let source = |id: &str| m.value_source(id);
        match self {
            Command::Check(a) => a.settle(source("dir")),
            Command::Report(a) => a.settle(source("data")),
            Command::Serve(a) => {
                a.settle(source);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A bad value that came from a `KEFU_*` variable, not from its flag: clap
/// names only the flag (`invalid value 'abc' for '--target-secs <N>'`),
/// which sends the reader looking for a flag they never typed. Adds the
/// variable's name to the message.
fn name_the_variable(mut e: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg).cloned() else {
        return e;
    };
    let cli = Cli::command();
    // The arguments of the (sub)subcommand named on the command line (flags
    // of the same name may read different variables in two subcommands;
    // `kefu events export` is two levels down).
    let mut sub = &cli;
    for a in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if let Some(s) = sub.find_subcommand(a) {
            sub = s;
        }
    }
    let env = sub.get_arguments().find_map(|a| {
        let long = a.get_long()?;
        let flag = format!("--{long}");
        let named = shown == flag || shown.starts_with(&format!("{flag} "));
        // Under any of its names: `--window` is `--service-window`.
        let longs: Vec<String> = std::iter::once(long)
            .chain(a.get_all_aliases().unwrap_or_default())
            .map(|l| format!("--{l}"))
            .collect();
        let shorts: Vec<String> = a
            .get_short()
            .into_iter()
            .chain(a.get_all_short_aliases().unwrap_or_default())
            .map(|c| format!("-{c}"))
            .collect();
        let typed = args.iter().filter_map(|x| x.to_str()).any(|x| {
            longs.iter().any(|l| {
                x == l
                    || x.strip_prefix(l.as_str())
                        .is_some_and(|r| r.starts_with('='))
            }) || shorts.iter().any(|s| x.starts_with(s.as_str()))
        });
        (named && !typed).then(|| a.get_env()).flatten()
    });
    if let Some(env) = env.filter(|env| std::env::var_os(env).is_some()) {
        let env = env.to_string_lossy();
        e.insert(
            ContextKind::InvalidArg,
            ContextValue::String(format!("{shown}, from {env}")),
        );
    }
    e
}

/// A usage error of subcommand `name`, shown as clap shows its own.
fn subcommand_error(name: &str, message: String) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    let kind = clap::error::ErrorKind::ArgumentConflict;
    match cli.find_subcommand_mut(name) {
        Some(sub) => sub.error(kind, message),
        None => cli.error(kind, message),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::try_parse_settled(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Check(a) => cmd::check(a),
        Command::Suggest(a) => cmd::suggest(a),
        Command::Lint(a) => cmd::lint(a),
        Command::Eval(a) => cmd::eval(a),
        Command::Serve(a) => cmd::serve::run(*a),
        Command::Events(a) => cmd::report::events(a),
        Command::Report(a) => cmd::report::report(a),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`kefu suggest ... | head`) is the reader's choice,
        // not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kefu: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command};
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    use std::path::PathBuf;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_settled(std::iter::once("kefu").chain(args.iter().copied()))
    }

    /// A negative offset is a value, not a flag: `--tz -05:00` was refused
    /// with "unexpected argument '-0' found".
    #[test]
    fn negative_time_zones_are_values() {
        let west = time::UtcOffset::from_hms(-5, 0, 0).unwrap();
        let cases: [&[&str]; 7] = [
            &["report", "--tz", "-05:00", "--events", "e.jsonl"],
            &["report", "--events", "e.jsonl", "--tz", "-05:00"],
            &["report", "--tz=-05:00", "--events", "e.jsonl"],
            &["events", "export", "--tz", "-05:00"],
            &["events", "export", "--tz", "-5", "--shop", "s1"],
            &[
                "events",
                "prune",
                "--before",
                "2026-01-01",
                "--tz",
                "-05:00",
            ],
            &["serve", "--tz", "-05:00", "--agent-token", "s1:a1:t"],
        ];
        for args in cases {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.command {
                Command::Report(a) => assert_eq!(a.window.tz, west, "{args:?}"),
                Command::Events(e) => match e.command {
                    super::cmd::report::EventsCommand::Export(x) => {
                        assert_eq!(x.window.tz, west, "{args:?}")
                    }
                    super::cmd::report::EventsCommand::Prune(x) => {
                        assert_eq!(x.tz, west, "{args:?}")
                    }
                    _ => panic!("{args:?}: not export or prune"),
                },
                Command::Serve(a) => assert_eq!(a.timezone.as_deref(), Some("-05:00")),
                _ => panic!("{args:?}: wrong command"),
            }
        }
    }

    /// A flag takes one entry, commas and all; only the variable splits.
    #[test]
    fn list_flags_take_one_entry_each() {
        let cli = parse(&[
            "serve",
            "--shop-name",
            "s1:小熊,官方",
            "--shop-name",
            "s2:店",
            "--agent-token",
            "s1:a1:t,1",
            "--supervisor-token",
            "s1:b,oss",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(a.shop_names, ["s1:小熊,官方", "s2:店"]);
        assert_eq!(a.agent_tokens, ["s1:a1:t,1"]);
        assert_eq!(a.supervisor_tokens, ["s1:b,oss"]);
    }

    #[test]
    fn list_variables_split_on_commas() {
        let cli = parse(&["serve", "--shop-name", "s1:小熊,官方"]).unwrap();
        let Command::Serve(mut a) = cli.command else {
            panic!("not serve");
        };
        // As clap hands over a variable's value: one string.
        a.agent_tokens = vec!["s1:a1:t1,s1:a2:t2,".into()];
        a.settle(|id| match id {
            "agent_tokens" => Some(ValueSource::EnvVariable),
            "shop_names" => Some(ValueSource::CommandLine),
            _ => None,
        });
        assert_eq!(a.agent_tokens, ["s1:a1:t1", "s1:a2:t2"]);
        assert_eq!(a.shop_names, ["s1:小熊,官方"], "a flag is not split");
        let cases: [(&str, &[&str]); 4] = [
            ("s1:a", &["s1:a"]),
            ("s1:a,s2:b", &["s1:a", "s2:b"]),
            ("s1:a,,s2:b,", &["s1:a", "s2:b"]),
            ("", &[]),
        ];
        for (value, want) in cases {
            let got = super::cmd::serve::split_env_list(vec![value.to_string()]);
            assert_eq!(got, want, "{value:?}");
        }
    }

    /// `--events` and an explicit `--data` are two sources; `KEFU_DATA` is
    /// only a default, which `--events` overrides.
    #[test]
    fn events_file_wins_over_data_from_the_environment() {
        let err = parse(&["report", "--data", "d", "--events", "e.jsonl"])
            .err()
            .expect("--data with --events is refused");
        assert!(err.to_string().contains("give one of them"), "{err}");
        let cases = [
            (Some(ValueSource::EnvVariable), Ok(None)),
            (Some(ValueSource::DefaultValue), Ok(None)),
            (None, Ok(None)),
            (Some(ValueSource::CommandLine), Err(())),
        ];
        for (source, want) in cases {
            let Command::Report(mut a) = parse(&["report", "--events", "e.jsonl"]).unwrap().command
            else {
                panic!("not report");
            };
            a.data = Some(PathBuf::from("from-env"));
            let got = a.settle(source).map(|()| a.data.clone()).map_err(|_| ());
            assert_eq!(got, want, "{source:?}");
        }
        // Without --events, the variable's directory is the one read.
        let Command::Report(mut a) = parse(&["report"]).unwrap().command else {
            panic!("not report");
        };
        a.data = Some(PathBuf::from("from-env"));
        a.settle(Some(ValueSource::EnvVariable)).unwrap();
        assert_eq!(a.data, Some(PathBuf::from("from-env")));
    }

    /// `kefu check` takes `--phrases` like every command that reads the
    /// libraries; the positional DIR still works.
    #[test]
    fn check_takes_phrases_like_the_others() {
        let dir = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Check(a)) => Ok(a.phrases.dir),
            Ok(_) => panic!("not check"),
            Err(e) => Err(e.to_string()),
        };
        let cases: [(&[&str], Result<&str, &str>); 6] = [
            (&["check", "--phrases", "p2"], Ok("p2")),
            (&["check", "p1"], Ok("p1")),
            (&["check", "p1", "--phrases", "p1"], Ok("p1")),
            (
                &["check", "p1", "--phrases", "p2"],
                Err("name different directories"),
            ),
            (
                &["check", "--phrases=p2", "p1"],
                Err("name different directories"),
            ),
            (&["check", "--phrases"], Err("a value is required")),
        ];
        for (args, want) in cases {
            match (dir(args), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, PathBuf::from(w), "{args:?}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{args:?}: {got}"),
                (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
            }
        }
        // A positional DIR wins over KEFU_PHRASES (a default, not a flag).
        let Ok(Command::Check(mut a)) = parse(&["check"]).map(|c| c.command) else {
            panic!("not check");
        };
        a.positional_dir = Some(PathBuf::from("p1"));
        a.phrases.dir = PathBuf::from("from-env");
        a.settle(Some(ValueSource::EnvVariable)).unwrap();
        assert_eq!(a.phrases.dir, PathBuf::from("p1"));
    }

    #[test]
    fn suggest_top_must_be_at_least_one() {
        let cases: [(&str, Option<usize>); 4] =
            [("1", Some(1)), ("5", Some(5)), ("0", None), ("-1", None)];
        for (top, want) in cases {
            let got = parse(&["suggest", "--top", top, "在吗"]).map(|c| match c.command {
                Command::Suggest(a) => a.top,
                _ => panic!("not suggest"),
            });
            assert_eq!(got.as_ref().ok().copied(), want, "--top {top}: {got:?}");
        }
        let err = parse(&["suggest", "--top", "0", "在吗"]).err().unwrap();
        assert!(err.to_string().contains("1 or more"), "{err}");
    }

    /// A flag without a doc comment shows up in `--help` bare, and a doc
    /// comment one line too high silently describes the wrong flag (which
    /// happened to `--log` and `--service-window`).
    #[test]
    fn every_flag_says_what_it_is_for() {
        Cli::command().debug_assert();
        let cli = Cli::command();
        let mut bare = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    bare.push(format!("kefu {} {id}", sub.get_name()));
                }
            }
        }
        assert!(bare.is_empty(), "no help text: {bare:?}");
    }

    #[test]
    fn serve_flags_have_their_own_help() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve exists");
        let help = |id: &str| {
            let arg = serve.get_arguments().find(|a| a.get_id() == id);
            arg.and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        let cases = [
            ("log", "Log filter"),
            ("service_window", "Reports count rounds"),
            ("data", "event log"),
            ("timezone", "time zone"),
        ];
        for (id, says) in cases {
            assert!(help(id).contains(says), "--{id}: {:?}", help(id));
        }
        assert!(!help("service_window").contains("Log filter"));
    }
}
