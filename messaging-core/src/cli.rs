//! The `consumer` command line (DESIGN §6). A service's consumer binary is one line:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     messaging_core::cli::main()
//! }
//! ```
//!
//! or, to register state for `State<T>` extractors, `cli::main_with(|runtime| runtime.state(pool))`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::broker::{ConnectionState, connect_once, factory, linked_backends};
use crate::config::{Config, configured_in_code, parse_duration, try_current_config};
use crate::dlq::{DeadLetterRecord, OriginalMessage, resolve_dlq_topic};
use crate::error::Error;
use crate::health::{self, Health};
use crate::metrics::metrics;
use crate::registry::{HandlerKind, HandlerSpec, check, registered_handlers};
use crate::replay::{ReplayOptions, record_id, replay};
use crate::retry::Backoff;
use crate::runtime::{Runtime, RuntimeBuilder};

/// Runs the registered handlers, or inspects them and their dead-letter queues.
#[derive(Debug, Parser)]
#[command(
    name = "consumer",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the handlers (the default when no command is given).
    Run(RunArgs),
    /// Lists the registered handlers: kind, topics, group, retries, schema, idempotent, DLQ.
    List,
    /// Lints the handler topology; exits non-zero on problems.
    Check,
    /// Inspects or replays a dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Prints how far each group is behind, per topic and partition.
    Lag(LagArgs),
    /// Prints the service's AsyncAPI 3.0 document: server, topics, handlers, events, DLQs.
    Asyncapi(AsyncapiArgs),
}

#[derive(Debug, Args)]
struct AsyncapiArgs {
    /// The document's format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// The backend, instead of MESSAGING_BACKEND.
    #[arg(long, value_name = "NAME")]
    broker: Option<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Runs only the handlers of this topic (repeatable; none = every handler).
    #[arg(long = "topic", value_name = "T")]
    topics: Vec<String>,
    /// Puts every handler in this consumer group.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// The backend, instead of MESSAGING_BACKEND.
    #[arg(long, value_name = "NAME")]
    broker: Option<String>,
    /// Handlers running at once per group (order is kept per key).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// Serves GET /health and GET /metrics on this address.
    #[arg(long, value_name = "ADDR")]
    health_addr: Option<SocketAddr>,
    /// How long shutdown waits for in-flight handlers.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg)]
    shutdown_timeout: Duration,
    /// New groups start from the oldest message the broker holds (no effect on RabbitMQ,
    /// where a group's queue holds only what came after it was declared).
    #[arg(long)]
    from_beginning: bool,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Prints the records of a topic's dead-letter queue, without consuming them.
    List(DlqArgs),
    /// Re-publishes dead-letter records to their original topic, each once.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct DlqArgs {
    /// The original topic (its DLQ is `<topic>.dlq` unless a handler names another).
    #[arg(long, value_name = "T")]
    topic: String,
    /// At most this many records.
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// The backend, instead of MESSAGING_BACKEND.
    #[arg(long, value_name = "NAME")]
    broker: Option<String>,
    /// One JSON record per line instead of a summary line each.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LagArgs {
    /// Only this group (a group of no handler reads every handler's topics, as
    /// `consumer --group G` runs them).
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// The backend, instead of MESSAGING_BACKEND.
    #[arg(long, value_name = "NAME")]
    broker: Option<String>,
    /// A JSON array of rows instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The original topic (its DLQ is `<topic>.dlq` unless a handler names another).
    #[arg(long, value_name = "T")]
    topic: String,
    /// At most this many records (of those waiting when the replay starts).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    limit: usize,
    /// The backend, instead of MESSAGING_BACKEND.
    #[arg(long, value_name = "NAME")]
    broker: Option<String>,
    /// Replays only the record with this id (as `dlq list` prints it).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Prints what would be replayed, and changes nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replays records even when they were replayed `--max-replays` times already.
    #[arg(long)]
    force: bool,
    /// Records replayed this many times are refused without `--force` (default:
    /// MESSAGING_DLQ_MAX_REPLAYS, else 3).
    #[arg(long, value_name = "N")]
    max_replays: Option<u32>,
}

fn duration_arg(value: &str) -> Result<Duration, String> {
    parse_duration("duration", value).map_err(|e| e.to_string())
}

/// Why a `consumer` with no handler refuses to run, and what to do about it.
const NO_HANDLERS: &str = "no handler is linked into this binary. If the handlers live in \
    your library crate, the binary must name it or the linker leaves it out: write the \
    binary as `messaging_core::main!(your_crate);` (or put `use your_crate as _;` in it). \
    Otherwise add a #[message_handler] or #[consumer].";

/// Parses the process arguments and runs; the exit code says how it went.
pub fn main() -> ExitCode {
    main_with(|runtime| runtime)
}

/// [`main`] with the runtime adjusted first (state for `State<T>`, handlers built in code).
pub fn main_with(adjust: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("consumer: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_cli(cli, adjust)) {
        Ok(code) => code,
        // Printed once, plainly: it is the last thing the process says.
        Err(error) => {
            eprintln!("consumer: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // lapin logs each connection failure at error level from its I/O thread, besides the
        // error the broker crate returns and this binary prints: once is enough.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_cli(
    cli: Cli,
    adjust: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> Result<ExitCode, Error> {
    match cli.command {
        None => run(cli.run, adjust).await,
        Some(Command::Run(args)) => run(args, adjust).await,
        Some(Command::List) => {
            let handlers = adjust(Runtime::builder()).selected_handlers()?;
            print!("{}", list(&handlers, &try_current_config()?));
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Check) => {
            let builder = adjust(Runtime::builder());
            let handlers = builder.selected_handlers()?;
            let mut problems = check(&handlers);
            if handlers.is_empty() {
                problems.push(NO_HANDLERS.to_owned());
            }
            problems.extend(builder.missing_states(&handlers).into_iter().map(|m| {
                format!("{m}: register it with `cli::main_with(|runtime| runtime.state(value))`")
            }));
            let config = try_current_config()?;
            match factory(&config.backend) {
                Ok(factory) => {
                    if let Err(error) = factory.check_settings(&config) {
                        problems.push(error.to_string());
                    }
                }
                Err(_) => problems.push(format!(
                    "MESSAGING_BACKEND=`{}` is not linked into this binary; linked: {} (depend on the broker crate and refer to it once: `use <its crate> as _;`)",
                    config.backend,
                    linked_backends().join(", ")
                )),
            }
            if problems.is_empty() {
                println!("ok: {} handlers, no problems", handlers.len());
                Ok(ExitCode::SUCCESS)
            } else {
                for problem in &problems {
                    println!("problem: {problem}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Some(Command::Asyncapi(args)) => {
            let handlers = adjust(Runtime::builder()).selected_handlers()?;
            let config = config_for(args.broker.as_deref())?;
            let document =
                crate::asyncapi::document(&handlers, &crate::registered_events(), &config)?;
            match args.format {
                Format::Json => println!("{document:#}"),
                Format::Yaml => print!("{}", crate::asyncapi::to_yaml(&document)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Dlq(DlqCommand::List(args))) => dlq_list(args).await,
        Some(Command::Dlq(DlqCommand::Replay(args))) => dlq_replay(args).await,
        Some(Command::Lag(args)) => lag(args, adjust).await,
    }
}

fn config_for(broker: Option<&str>) -> Result<Config, Error> {
    let mut config = try_current_config()?;
    if let Some(broker) = broker {
        config.backend = broker.trim().to_ascii_lowercase();
    }
    Ok(config)
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight messages (signal again to exit now)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(
    args: RunArgs,
    adjust: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> Result<ExitCode, Error> {
    let config = config_for(args.broker.as_deref())?;
    let connection = Arc::new(ConnectionState::default());
    let mut builder = adjust(Runtime::builder())
        .config(config.clone())
        .connection_state(Arc::clone(&connection))
        // A service waits for its broker (reporting on /health) rather than exiting.
        .retry_forever(true)
        .from_beginning(args.from_beginning)
        .shutdown_timeout(args.shutdown_timeout);
    if !args.topics.is_empty() {
        builder = builder.topics(args.topics.clone());
    }
    if let Some(group) = &args.group {
        builder = builder.group(group.clone());
    }
    if let Some(n) = args.concurrency {
        builder = builder.concurrency(n.into());
    }
    let handlers = builder.selected_handlers()?;
    if handlers.is_empty() {
        return Err(Error::Registry(NO_HANDLERS.to_owned()));
    }
    // Before the runtime starts: it takes its metric handles from the recorder then.
    if let Err(error) = crate::metrics::install_prometheus() {
        tracing::info!(%error, "a metrics recorder is already installed; /metrics serves messaging's own metrics only");
    }
    let stop_serving = CancellationToken::new();
    let _stop_serving = stop_serving.clone().drop_guard();
    if let Some(addr) = args.health_addr {
        let health = Arc::new(Health {
            backend: config.backend.clone(),
            enabled: config.backend != "disabled",
            handlers: handlers.len(),
            connection: Arc::clone(&connection),
            stall_after: config.health_stall_after,
            lag_alert: config.lag.alert,
        });
        let bound = health::serve(addr, health, stop_serving.clone())
            .await
            .map_err(|e| Error::Config {
                key: "--health-addr".into(),
                message: format!("cannot listen on {addr}: {e}"),
            })?;
        tracing::info!(%bound, "serving /health and /metrics");
    }
    tracing::info!(
        backend = %config.backend,
        handlers = handlers.len(),
        topics = ?handlers.iter().flat_map(|h| h.topics().iter().cloned()).collect::<std::collections::BTreeSet<_>>(),
        "starting consumer"
    );

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let runtime = tokio::select! {
        runtime = builder.start() => runtime?,
        _ = &mut signal => return Ok(ExitCode::SUCCESS),
    };
    let summary = tokio::spawn(log_summaries(Duration::from_secs(60)));
    runtime.run_until(signal).await?;
    summary.abort();
    log_summary("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn log_summaries(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        log_summary("running");
    }
}

fn log_summary(state: &str) {
    let totals = metrics().handler_totals();
    tracing::info!(
        state,
        handled = totals.succeeded,
        dead_lettered = totals.dead_lettered,
        retried = totals.retried,
        "consumer summary"
    );
}

/// The `list` table.
fn list(handlers: &[HandlerSpec], config: &Config) -> String {
    let mut rows = vec![
        [
            "KIND",
            "HANDLER",
            "TOPICS",
            "GROUP",
            "EVENT",
            "RETRIES",
            "DELAY",
            "BACKOFF",
            "SCHEMA",
            "PUBLISHES",
            "IDEMPOTENT",
            "DLQ",
        ]
        .map(str::to_owned),
    ];
    // What the broker adds about a topic (what it is called there), when it adds anything.
    let broker = factory(&config.backend).ok();
    let topic = |t: &String| match broker.and_then(|b| b.note_topic(config, t)) {
        Some(note) => format!("{t} [{note}]"),
        None => t.clone(),
    };
    for h in handlers {
        let retry = h.retry_policy();
        rows.push([
            match h.kind() {
                HandlerKind::MessageHandler => "message_handler".to_owned(),
                HandlerKind::OnEvent => "on_event".to_owned(),
            },
            h.qualified_name().to_owned(),
            h.topics().iter().map(topic).collect::<Vec<_>>().join(","),
            h.group_name().to_owned(),
            h.event_name().unwrap_or("-").to_owned(),
            if h.uses_retry_topics() {
                format!("{} via topics", retry.max_retries)
            } else {
                retry.max_retries.to_string()
            },
            humantime::format_duration(retry.retry_delay).to_string(),
            match retry.backoff {
                Backoff::Constant => "constant",
                Backoff::Linear => "linear",
                Backoff::Exponential => "exponential",
            }
            .to_owned(),
            h.schema().unwrap_or("-").to_owned(),
            h.publishes_to()
                .map_or_else(|| "-".to_owned(), |t| config.resolve_topic(t).to_owned()),
            if h.is_idempotent() { "yes" } else { "-" }.to_owned(),
            h.topics()
                .iter()
                .map(|t| h.dlq_topic_in(t, config))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    crate::table::aligned(&rows)
}

/// Where the DLQ records of one topic are.
struct DlqOf {
    /// The DLQ topic: the one a registered handler names, else the configuration's
    /// (`MESSAGING_DLQ_TOPIC`), else `<topic>.dlq`.
    topic: String,
    /// Whether it holds the records of every topic (a global `MESSAGING_DLQ_TOPIC` without
    /// `{topic}`): then only the records whose original is on the asked topic are listed
    /// and replayed.
    shared: bool,
}

fn dlq_of(topic: &str, config: &Config) -> DlqOf {
    let handler = registered_handlers()
        .into_iter()
        .find(|h| h.topics().iter().any(|t| t == topic));
    let own = handler.as_ref().is_some_and(|h| h.dlq.is_some());
    let global = config.dlq_topic.as_deref();
    DlqOf {
        topic: match &handler {
            Some(h) => h.dlq_topic_in(topic, config),
            None => resolve_dlq_topic(topic, None, global),
        },
        shared: !own && global.is_some_and(|g| !g.contains("{topic}")),
    }
}

/// The configuration for a `dlq` or `lag` command. The memory broker's DLQs and groups live
/// in the process that made them, so such a command on it reads nothing: it runs only when
/// named explicitly.
fn dlq_config(broker: Option<&str>) -> Result<Config, Error> {
    let config = config_for(broker)?;
    let named = broker.is_some()
        || configured_in_code()
        || std::env::var("MESSAGING_BACKEND").is_ok_and(|v| !v.trim().is_empty());
    if config.backend == "memory" && !named {
        return Err(Error::Config {
            key: "MESSAGING_BACKEND".to_owned(),
            message: format!(
                "is not set, so this would read the in-memory broker, whose DLQs and groups end \
                 with the process that made them; set MESSAGING_BACKEND to the broker the service uses \
                 (linked: {}) or pass --broker memory",
                linked_backends().join(", ")
            ),
        });
    }
    Ok(config)
}

/// `consumer lag`: the registered groups' lag (or one group's), read from the broker, so it
/// works whether or not their consumers run.
async fn lag(
    args: LagArgs,
    adjust: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> Result<ExitCode, Error> {
    // Like the DLQ, the memory broker's groups live in the process that made them.
    let config = dlq_config(args.broker.as_deref())?;
    let handlers = adjust(Runtime::builder())
        .config(config.clone())
        .selected_handlers()?;
    let mut groups = crate::lag::group_topics(&handlers);
    if let Some(group) = args.group {
        let topics = match groups.remove(&group) {
            Some(topics) => topics,
            None => groups
                .into_values()
                .flatten()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        groups = [(group, topics)].into();
    }
    let broker = connect_once(&config).await?;
    let mut rows = Vec::new();
    for (group, topics) in &groups {
        rows.extend(broker.lag(group, topics).await?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else if rows.is_empty() {
        eprintln!("no lag to show: no group has read these topics yet");
    } else {
        print!("{}", crate::lag::table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// How many records of a shared DLQ `dlq list` reads at most to find those of one topic.
const SHARED_BROWSE_MAX: usize = 10_000;

async fn dlq_list(args: DlqArgs) -> Result<ExitCode, Error> {
    let config = dlq_config(args.broker.as_deref())?;
    let broker = connect_once(&config).await?;
    let dlq = dlq_of(&args.topic, &config);
    let dlq_topic = &dlq.topic;
    // A shared DLQ holds other topics' records too: look further to find `limit` of these.
    let window = if dlq.shared {
        args.limit
            .saturating_mul(10)
            .min(SHARED_BROWSE_MAX)
            .max(args.limit)
    } else {
        args.limit
    };
    let mut messages = broker.browse(dlq_topic, window).await?;
    if dlq.shared {
        messages.retain(|m| {
            DeadLetterRecord::from_bytes(&m.payload).is_ok_and(|r| r.original.topic == args.topic)
        });
        messages.truncate(args.limit);
    }
    if messages.is_empty() {
        eprintln!("{dlq_topic}: no records of {}", args.topic);
    }
    for message in messages {
        if args.json {
            println!("{}", String::from_utf8_lossy(&message.payload));
            continue;
        }
        match DeadLetterRecord::from_bytes(&message.payload) {
            Ok(r) => println!(
                "{} id={} {} attempts={} replays={} kind={} truncated={} handler={} group={} key={} at={} error={:?}",
                r.dead_lettered_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                record_id(&r, &message),
                r.original.topic,
                r.attempts,
                r.replays,
                r.error.kind,
                r.original.truncated,
                r.handler,
                r.group,
                shown_key(&r.original),
                r.original.position,
                r.error.message,
            ),
            Err(error) => println!("{}: not a DLQ record ({error})", message.position),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A record's key as `dlq list` shows it: text as is, other bytes as `base64:…`, none as `-`.
fn shown_key(original: &OriginalMessage) -> String {
    match (&original.key, original.key_encoding.as_deref()) {
        (None, _) => "-".to_owned(),
        (Some(key), Some(encoding)) => format!("{encoding}:{key}"),
        (Some(key), None) => key.clone(),
    }
}

async fn dlq_replay(args: ReplayArgs) -> Result<ExitCode, Error> {
    let config = dlq_config(args.broker.as_deref())?;
    let broker = connect_once(&config).await?;
    let dlq = dlq_of(&args.topic, &config);
    let options = ReplayOptions {
        topic: args.topic,
        dlq_topic: dlq.topic,
        shared: dlq.shared,
        limit: args.limit,
        id: args.id,
        dry_run: args.dry_run,
        force: args.force,
        max_replays: args.max_replays.unwrap_or(config.dlq_max_replays),
    };
    let report = replay(&*broker, &options).await?;
    for why in &report.kept {
        eprintln!("kept in the DLQ: {why}");
    }
    if options.dry_run {
        for (id, topic) in &report.would_replay {
            println!("would replay {id} to {topic}");
        }
    }
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_parses_as_designed() {
        let cli = Cli::try_parse_from([
            "consumer",
            "--topic",
            "a",
            "--topic",
            "b",
            "--group",
            "g",
            "--concurrency",
            "4",
            "--health-addr",
            "127.0.0.1:9000",
            "--shutdown-timeout",
            "5s",
            "--from-beginning",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.topics, ["a", "b"]);
        assert_eq!(cli.run.shutdown_timeout, Duration::from_secs(5));
        assert!(cli.run.from_beginning);
        let cli =
            Cli::try_parse_from(["consumer", "dlq", "replay", "--topic", "t", "--limit", "3"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Dlq(DlqCommand::Replay(ReplayArgs {
                limit: 3,
                dry_run: false,
                ..
            })))
        ));
        let cli = Cli::try_parse_from([
            "consumer",
            "dlq",
            "replay",
            "--topic",
            "t",
            "--id",
            "x",
            "--dry-run",
            "--force",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Dlq(DlqCommand::Replay(ReplayArgs {
                dry_run: true,
                force: true,
                id: Some(_),
                ..
            })))
        ));
        assert!(Cli::try_parse_from(["consumer", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["consumer", "--shutdown-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["consumer", "list"]).is_ok());
        assert!(Cli::try_parse_from(["consumer", "check"]).is_ok());
        assert!(matches!(
            Cli::try_parse_from(["consumer", "asyncapi", "--format", "yaml"])
                .unwrap()
                .command,
            Some(Command::Asyncapi(AsyncapiArgs {
                format: Format::Yaml,
                ..
            }))
        ));
        assert!(Cli::try_parse_from(["consumer", "asyncapi", "--format", "xml"]).is_err());
        let cli = Cli::try_parse_from(["consumer", "lag", "--group", "g", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Lag(LagArgs {
                json: true,
                group: Some(_),
                ..
            }))
        ));
    }
}
