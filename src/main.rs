//! The `kefu` command: parses the command line and calls the library.

mod cmd;

/// mimalloc rather than glibc's allocator: a buyer message makes a few
/// dozen short-lived allocations (frames, JSON, the event) on two worker
/// threads. At 6,000 messages/s this took the server's CPU per message
/// from 161-169 µs to 145-155 µs, and its p50 latency from 200-310 µs to
/// 130-180 µs (BENCHMARKS.md). The relay and the load generator use it too,
/// so the comparison stays like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
    use super::Cli;
    use clap::CommandFactory;

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
