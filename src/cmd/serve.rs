//! `kefu serve`: settings from file, environment and flags, then the service.
//!
//! Every flag has a `KEFU_*` variable; a flag wins over its variable, and
//! both win over the config file. A list flag takes one entry each time it
//! is given (so an entry may hold a comma: `--shop-name "s1:小熊,官方"`);
//! only the list variables take comma-separated entries
//! (`KEFU_AGENT_TOKENS=s1:a1:tok1,s1:a2:tok2`), so an entry with a comma
//! must come from a flag or the config file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use kefu::config::{Config, Overrides};
use kefu::server::{self, App, ResumeKey};
use kefu::store::Store;

#[derive(clap::Args)]
#[command(after_help = "One command line starts a shop:\n  \
    kefu serve --agent-token s1:a1:secret1 --shop-name s1:小米旗舰店\n\
    then buyers and agents connect to ws://127.0.0.1:8080/ws (docs/PROTOCOL.md).")]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]. Anything but
    /// loopback exposes the service to the network.
    #[arg(long, env = "KEFU_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// YAML config file (every key is shown in kefu.example.yaml).
    #[arg(long, env = "KEFU_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Phrase directory, reloaded on change [default: phrases].
    #[arg(long, env = "KEFU_PHRASES", value_name = "DIR")]
    pub phrases: Option<PathBuf>,
    /// Directory of the event log, the resume key and the last-good copy
    /// of the phrase libraries [default: ./data].
    #[arg(long, env = "KEFU_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Response-time target in seconds [default: 30].
    #[arg(long, env = "KEFU_TARGET_SECS", value_name = "N")]
    pub target_secs: Option<f64>,
    /// Nudge the agent after this many seconds of waiting [default: 20].
    #[arg(long, env = "KEFU_NUDGE_SECS", value_name = "N")]
    pub nudge_secs: Option<f64>,
    /// Send the buyer one holding reply per round after this many seconds;
    /// 0 for never [default: 15].
    #[arg(long, env = "KEFU_HOLDING_SECS", value_name = "N")]
    pub holding_secs: Option<f64>,
    /// An agent and their token (repeatable, one entry each; the variable
    /// takes comma-separated entries).
    #[arg(
        long = "agent-token",
        env = "KEFU_AGENT_TOKENS",
        value_name = "SHOP:AGENT:TOKEN",
        hide_env_values = true
    )]
    pub agent_tokens: Vec<String>,
    /// A supervisor token for a shop's reports (repeatable, one entry each;
    /// the variable takes comma-separated entries).
    #[arg(
        long = "supervisor-token",
        env = "KEFU_SUPERVISOR_TOKENS",
        value_name = "SHOP:TOKEN",
        hide_env_values = true
    )]
    pub supervisor_tokens: Vec<String>,
    /// The shop's display name for `{shop}` in replies (repeatable, one
    /// entry each; the variable takes comma-separated entries, so a name
    /// with a comma goes in a flag or the config file) [default: the shop id].
    #[arg(long = "shop-name", env = "KEFU_SHOP_NAMES", value_name = "SHOP:NAME")]
    pub shop_names: Vec<String>,
    /// Reports count rounds starting in this window of shop time [default: 08:00-23:00].
    #[arg(long, env = "KEFU_SERVICE_WINDOW", value_name = "HH:MM-HH:MM")]
    pub service_window: Option<String>,
    /// The shops' time zone for reports, e.g. +08:00 or -05:00 [default: +08:00].
    #[arg(
        long = "tz",
        env = "KEFU_TZ",
        value_name = "OFFSET",
        allow_hyphen_values = true
    )]
    pub timezone: Option<String>,
    /// Log filter, e.g. `info` or `kefu=debug` [default: info, or RUST_LOG].
    /// The WebSocket library never logs below `debug` (at `trace` it would
    /// log every frame: tokens, resume secrets, chat text).
    #[arg(long, env = "KEFU_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// The flags whose value came from their `KEFU_*` variable, with the
    /// variable: named in an error about the value (set by [`Self::settle`]).
    #[arg(skip)]
    pub from_env: Vec<(String, String)>,
}

/// The entries of a list variable: separated by commas, empty ones (a
/// trailing comma) dropped.
pub fn split_env_list(values: Vec<String>) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

impl ServeArgs {
    /// Splits the lists that came from their variable on commas. clap
    /// cannot do it for the variable alone (`value_delimiter` would split
    /// the flags too), so `source` tells, for each list id, where clap took
    /// its values from.
    pub fn settle(&mut self, source: impl Fn(&str) -> Option<ValueSource>) {
        let cmd = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        self.from_env = cmd
            .get_arguments()
            .filter(|a| source(a.get_id().as_str()) == Some(ValueSource::EnvVariable))
            .filter_map(|a| {
                let env = a.get_env()?.to_string_lossy().into_owned();
                Some((format!("--{}", a.get_long()?), env))
            })
            .collect();
        for (id, list) in [
            ("agent_tokens", &mut self.agent_tokens),
            ("supervisor_tokens", &mut self.supervisor_tokens),
            ("shop_names", &mut self.shop_names),
        ] {
            if source(id) == Some(ValueSource::EnvVariable) {
                *list = split_env_list(std::mem::take(list));
            }
        }
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            phrases: self.phrases.clone(),
            data: self.data.clone(),
            target_secs: self.target_secs,
            nudge_secs: self.nudge_secs,
            holding_secs: self.holding_secs,
            agent_tokens: self.agent_tokens.clone(),
            supervisor_tokens: self.supervisor_tokens.clone(),
            shop_names: self.shop_names.clone(),
            service_window: self.service_window.clone(),
            timezone: self.timezone.clone(),
        }
    }
}

/// A `--log` filter that does not parse is refused: `EnvFilter::new` would
/// drop the bad directive and leave a service that logs nothing, not even
/// the address it listens on.
fn init_logging(filter: Option<&str>) -> anyhow::Result<()> {
    let filter = log_filter(filter)?;
    // Another subcommand (or a test) may have set one up already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}

/// The WebSocket library logs every frame it reads and writes at `trace`:
/// agents' tokens in their `hello`, buyers' resume secrets, every chat
/// line (found by review, with `--log trace`). Where the filter lets
/// anything through at `trace`, the library is capped at `debug` (which
/// logs no payloads); otherwise the filter is left alone, so its level
/// hint, which the `log` bridge and every disabled call site check first,
/// stays what it was (a second filter layer raised it to `trace` and cost
/// the hot path a filter call per frame: 36 µs per message instead of 30
/// at the maximum, measured this session with `scripts/bench.sh`).
const QUIET_TRANSPORT: [&str; 2] = ["tungstenite=debug", "tokio_tungstenite=debug"];

fn log_filter(filter: Option<&str>) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::EnvFilter;
    let mut filter = match filter {
        Some(f) => EnvFilter::try_new(f).with_context(|| {
            format!("--log {f:?} is not a log filter; give e.g. `info`, `warn` or `kefu=debug`")
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    if filter
        .max_level_hint()
        .is_none_or(|l| l >= LevelFilter::TRACE)
    {
        for d in QUIET_TRANSPORT {
            filter = filter.add_directive(d.parse().expect("a valid directive"));
        }
    }
    Ok(filter)
}

/// File descriptors kept for the event log, phrase reloads, accepting,
/// the 503s answered past the limit (16 at most) and the like, beyond one
/// per connection.
const SPARE_FILES: u64 = 64;

/// Raises the open-files limit to what the system allows and, if
/// `limits.max_connections` still does not fit, lowers it (with a
/// warning): past the descriptor limit, accepting fails and new
/// connections hang in the listen queue instead of being refused, agents
/// included, while the phrase watcher cannot read its directory.
#[cfg(unix)]
fn fit_connections_to_open_files(config: &mut Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    // rlim_t is u64 on Linux but not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    let open_files = lim.rlim_cur as u64;
    let fits = open_files.saturating_sub(SPARE_FILES) as usize;
    let wanted = config.limits.max_connections;
    if wanted > fits {
        // The default asks for more than many hosts allow: saying so at
        // every start of an untouched configuration is noise (found by
        // review), a limit the operator set is worth a warning.
        if wanted == kefu::config::Limits::default().max_connections {
            tracing::info!(
                wanted,
                allowed = fits,
                open_files,
                "limits.max_connections (default) is more than this process may open; using {fits} (raise `ulimit -n` for more)"
            );
        } else {
            tracing::warn!(
                wanted,
                allowed = fits,
                open_files,
                "limits.max_connections is more than this process may open; using {fits} (raise `ulimit -n` for more)"
            );
        }
        config.limits.max_connections = fits.max(1);
        let l = &mut config.limits;
        if l.staff_reserve >= l.max_connections {
            // Validated against the wanted limit; half of a limit this
            // small still lets both buyers and staff in.
            let reserve = l.max_connections / 2;
            tracing::warn!(
                wanted = l.staff_reserve,
                using = reserve,
                "limits.staff_reserve does not fit below the lowered max_connections; using {reserve}"
            );
            l.staff_reserve = reserve;
        }
    }
}

#[cfg(not(unix))]
fn fit_connections_to_open_files(_config: &mut Config) {}

/// Keeps the kernel from backing the service's memory with transparent
/// huge pages, as Redis does (`disable-thp`).
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`,
/// its `allow_thp` option), and the service's memory grows with every
/// conversation it holds. Where the host compacts memory to serve such a
/// fault (THP defrag `madvise`, a common default), or splits a huge page
/// the allocator hands back, the worker that touched it stalls for
/// milliseconds and the buyers behind it wait: at 16,700 buyer messages a
/// second on the 2-core bench machine the p99 was 2.9-3.4 ms with huge
/// pages and 0.7-1.3 ms without (docs/benchmarks-history.md, fourteenth
/// session).
/// Small pages cost a little more TLB work, which this service, mostly
/// small objects touched once, does not notice.
#[cfg(target_os = "linux")]
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot turn transparent huge pages off; memory may stall under load"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn no_transparent_huge_pages() {}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Before the phrase libraries and the hub take their memory.
    no_transparent_huge_pages();
    init_logging(args.log.as_deref())?;
    let config = Config::load(args.config.as_deref(), &args.overrides()).map_err(|e| {
        // A bad value checked here (not by clap) names its flag; say so
        // when the flag was not typed but came from its variable.
        let from = match &e {
            kefu::config::ConfigError::Invalid { setting, .. } => args
                .from_env
                .iter()
                .find(|(flag, _)| setting == flag || setting.starts_with(&format!("{flag} "))),
            _ => None,
        };
        let context = match from {
            Some((flag, env)) => {
                format!("invalid settings for kefu serve ({flag} is set by {env})")
            }
            None => "invalid settings for kefu serve".to_string(),
        };
        anyhow::Error::new(e).context(context)
    })?;
    if !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "listening beyond loopback: the service is reachable from the network"
        );
    }
    log_settings(&config, args.config.as_deref());
    let mut config = config;
    fit_connections_to_open_files(&mut config);
    warn_weak_tokens(&config);
    let store = Store::open_or_set_aside(&config.data)
        .with_context(|| format!("cannot open the event log in {}", config.data.display()))?;
    let listen = config.listen;
    let data = config.data.clone();
    warn_if_log_lost(&store, &data);
    let app = open_app(config.clone(), &store, &data)?;
    // Before the port opens: a buyer who reconnects at once must find
    // their conversation.
    let failed = || {
        format!(
            "cannot restore the open conversations from the event log in {}",
            data.display()
        )
    };
    let (store, app) = match app.restore(&store.reader()) {
        // Damage the open did not see (in the pages of the last events):
        // set aside as at open, and the service starts on a new log. The
        // restore changed nothing before it failed reading, and nothing
        // was recorded yet.
        Err(e) if e.is_damaged() && store.handle().damaged_log_set_aside().is_none() => {
            drop(app);
            let store = store
                .set_aside_and_reopen(&e)
                .with_context(|| format!("cannot open a new event log in {}", data.display()))?;
            let app = open_app(config, &store, &data)?;
            app.restore(&store.reader()).with_context(failed)?;
            (store, app)
        }
        restored => {
            restored.with_context(failed)?;
            (store, app)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(super::memory::collect_when_quiet)
        .on_thread_unpark(super::memory::note_unpark)
        .build()
        .context("cannot start the async runtime")?;
    let served: anyhow::Result<()> = runtime.block_on(async {
        let shutdown = server::shutdown_signal();
        reload_on_hangup(&app, args.config.clone(), args.overrides());
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| bind_error(listen, e))?;
        server::run(listener, app, shutdown).await?;
        Ok(())
    });
    drop(runtime);
    // Whatever happened, write out the events already queued.
    store.close().context("cannot close the event log")?;
    tracing::info!("event log closed");
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The service's state over `store`, its reports and resume key read from
/// data directory `data`.
fn open_app(config: Config, store: &Store, data: &std::path::Path) -> anyhow::Result<App> {
    let app = App::open(config, store.handle(), data)?;
    app.attach_reports(store.reader());
    app.set_resume_key(ResumeKey::load_or_create(data)?);
    Ok(app)
}

/// A new log in a directory a service used before (it holds the resume key
/// the service writes at its first start) means the log was removed or
/// emptied: said at start, since it then starts as if for the first time
/// and nothing else would tell (found by review). Not after a damaged log
/// was set aside, which has its own error.
fn warn_if_log_lost(store: &Store, data: &std::path::Path) {
    if store.created()
        && store.handle().damaged_log_set_aside().is_none()
        && data.join(kefu::server::KEY_FILE).exists()
    {
        tracing::warn!(
            path = %store.path().display(),
            "the event log is new but this data directory was used before ({} exists): was \
             events.db removed or emptied? Reports before now and open conversations are gone \
             unless you restore it from a backup (stop kefu serve, put back events.db with its \
             events.db-wal and events.db-shm as they were backed up, start again)",
            kefu::server::KEY_FILE
        );
    }
}

/// What the service runs with, so an operator reading the log can tell a
/// setting that did not take (a config file not read, a shop id mistyped)
/// from one that did. Never a token.
fn log_settings(config: &Config, file: Option<&std::path::Path>) {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %file.map_or_else(|| "(none: defaults, flags and KEFU_* variables)".to_string(), |p| p.display().to_string()),
        phrases = %config.phrases.display(),
        data = %config.data.display(),
        "kefu serve starting"
    );
    for (id, shop) in &config.shops {
        tracing::info!(
            shop = %id,
            name = shop.name.as_deref().unwrap_or(id),
            agents = shop.agents.len(),
            supervisors = shop.supervisors.len(),
            "shop"
        );
    }
    for id in config.shops_without_agents() {
        tracing::warn!(
            shop = %id,
            "shop {id} has no agents: its buyers only get the offline reply; if it is another shop's \
             id mistyped in --shop-name, --supervisor-token or the config file (ids are case-sensitive), \
             fix it there"
        );
    }
}

/// What failed when the port cannot be bound, and what to do about it.
fn bind_error(listen: std::net::SocketAddr, e: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind;
    let hint = match e.kind() {
        ErrorKind::AddrInUse => "another program (another kefu?) listens there: stop it or give --listen another port",
        ErrorKind::AddrNotAvailable => "that is not an address of this machine: use 127.0.0.1 or one of its own addresses in --listen",
        ErrorKind::PermissionDenied => "ports below 1024 need privileges: use a higher port (and a proxy in front)",
        _ => "check --listen",
    };
    anyhow::anyhow!("cannot listen on {listen}: {e}; {hint}")
}

/// SIGHUP reloads the phrase libraries and the staff (`systemctl reload`,
/// `kill -HUP`) instead of ending the service as its default action does:
/// an SSH hang-up or a reload signal killed it without closing the event
/// log (found by review). The settings file is read again, with the
/// flags and environment of the start laid over it as then (so an agent
/// given by `--agent-token` keeps its token: said in the log); of them the
/// agents and their tokens and the
/// supervisors' tokens take effect (a shop manager adds an agent or
/// revokes a leaked token without dropping every chat), the rest (shops
/// added or removed, limits, the clock, the port) is named in the log as
/// needing a restart. Settings that do not load are reported with their
/// position and the running ones kept. Registered before the port opens,
/// as the shutdown signals are.
#[cfg(unix)]
fn reload_on_hangup(
    app: &kefu::server::App,
    file: Option<std::path::PathBuf>,
    overrides: Overrides,
) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            let app = app.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the phrase libraries and the staff");
                    app.reload_phrases().await;
                    match Config::load(file.as_deref(), &overrides) {
                        Ok(config) => {
                            reload_staff(&app, &config);
                            if !overrides.agent_tokens.is_empty() {
                                tracing::warn!(
                                    "agents given with --agent-token or KEFU_AGENT_TOKENS keep the \
                                     tokens they had at start (flags and environment are read only \
                                     then, and override the file): to revoke one, remove it there \
                                     and restart"
                                );
                            }
                        }
                        Err(e) => tracing::error!(
                            "settings not reloaded, the running ones stay: {:#}",
                            anyhow::Error::from(e)
                        ),
                    }
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP, which will end the service: {e}"),
    }
}

#[cfg(not(unix))]
fn reload_on_hangup(
    _app: &kefu::server::App,
    _file: Option<std::path::PathBuf>,
    _overrides: Overrides,
) {
}

/// Warns about the tokens of `config` too short to resist guessing, at
/// start and at each reload.
fn warn_weak_tokens(config: &Config) {
    let weak = config.weak_tokens();
    if !weak.is_empty() {
        tracing::warn!(
            who = %weak.join(", "),
            "tokens shorter than {} characters: failed sign-ins are throttled per account, which slows a guesser down but does not stop one, so use long random tokens",
            kefu::config::WEAK_TOKEN_CHARS
        );
    }
}

/// Applies the staff of `config` and logs what changed and what waits for
/// a restart.
fn reload_staff(app: &kefu::server::App, config: &Config) {
    let c = app.reload_staff(config);
    tracing::info!(
        added = %c.added.join(", "),
        token_changed = %c.changed.join(", "),
        removed = %c.removed.join(", "),
        "staff reloaded (agents whose token changed or who were removed are signed out)"
    );
    if !c.shops_removed.is_empty() {
        tracing::warn!(
            shops = %c.shops_removed.join(", "),
            "shops no longer in the settings file: their agents are signed out and new buyers \
             refused (buyers connected now stay until they leave)"
        );
    }
    if !c.shops_back.is_empty() {
        tracing::info!(
            shops = %c.shops_back.join(", "),
            "shops in the settings file again: their buyers and agents are served"
        );
    }
    warn_weak_tokens(config);
    let old = app.config();
    let mut restart: Vec<String> = Vec::new();
    if !c.shops_added.is_empty() {
        restart.push(format!("shops added ({})", c.shops_added.join(", ")));
    }
    // The running limits had `max_connections` fitted to the open-files
    // limit at start; the file's value is fitted the same way before the
    // comparison, or every reload on such a host would report a change.
    let mut limits = config.limits.clone();
    limits.max_connections = limits.max_connections.min(old.limits.max_connections);
    for (name, same) in [
        ("listen", old.listen == config.listen),
        ("phrases", old.phrases == config.phrases),
        ("data", old.data == config.data),
        ("clock", old.clock == config.clock),
        ("reload", old.reload_poll == config.reload_poll),
        ("limits", old.limits == limits),
        ("reports", old.reports == config.reports),
        (
            "allowed_origins",
            old.allowed_origins == config.allowed_origins,
        ),
    ] {
        if !same {
            restart.push(name.to_string());
        }
    }
    if !restart.is_empty() {
        tracing::warn!(
            changed = %restart.join(", "),
            "these settings changed but take effect only at a restart"
        );
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    /// (filter, target, level, logged?): the transport never logs its
    /// frames (tokens, secrets, chat text), even when asked to.
    #[test]
    fn the_transport_never_logs_frames() {
        let cases: &[(&str, &str, Level, bool)] = &[
            ("trace", "tungstenite::protocol", Level::TRACE, false),
            ("trace", "tungstenite::protocol", Level::DEBUG, true),
            ("trace", "tokio_tungstenite", Level::TRACE, false),
            (
                "tungstenite=trace",
                "tungstenite::protocol",
                Level::TRACE,
                false,
            ),
            ("trace", "kefu::server", Level::TRACE, true),
            ("info", "tungstenite::protocol", Level::DEBUG, false),
            ("info", "kefu::server", Level::INFO, true),
            // Trace for kefu alone: the library at debug (no payloads).
            ("kefu=trace", "tungstenite::protocol", Level::TRACE, false),
            ("kefu=trace", "kefu::server", Level::TRACE, true),
        ];
        // Below trace the filter's level hint is untouched: it is what the
        // hot path's disabled call sites and the `log` bridge check first.
        for (filter, hint) in [
            ("warn", Level::WARN),
            ("info", Level::INFO),
            ("debug", Level::DEBUG),
        ] {
            assert_eq!(
                super::log_filter(Some(filter)).unwrap().max_level_hint(),
                Some(tracing::level_filters::LevelFilter::from_level(hint)),
                "{filter}"
            );
        }
        for &(filter, target, level, want) in cases {
            let subscriber =
                tracing_subscriber::registry().with(super::log_filter(Some(filter)).unwrap());
            let got = tracing::subscriber::with_default(subscriber, || {
                // `enabled!` needs a literal target; ask the filter directly.
                tracing::dispatcher::get_default(|d| {
                    d.enabled(&tracing::Metadata::new(
                        "probe",
                        target,
                        level,
                        None,
                        None,
                        None,
                        tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&PROBE)),
                        tracing::metadata::Kind::EVENT,
                    ))
                })
            });
            assert_eq!(got, want, "{filter}: {target} at {level}");
        }
    }

    struct Probe;
    impl tracing::Callsite for Probe {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!("not registered")
        }
    }
    static PROBE: Probe = Probe;
}
