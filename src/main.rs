//! The `outpost` command line: parse, set up logging, load config, run.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use outpost::auth::{Auth, Scope};
use outpost::config::{parse_duration, Config, LogFormat, Settings};
use outpost::server::{terminate_signal, Relay};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Edge sync relay")]
struct Cli {
    /// Log format: plain text lines or JSON objects (overrides [log] format).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default with no arguments).
    Serve(ServeArgs),
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Mint an HS256 JWT signed with the configured secret.
    Token {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum)]
        scope: Scope,
        /// Limit the token to these spaces (repeatable).
        #[arg(long)]
        space: Vec<String>,
        /// Lifetime, e.g. 30m, 24h, 90d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Subject (who the token is for).
        #[arg(long, default_value = "outpost-cli")]
        sub: String,
    },
    /// Benchmark: drive child relays (or --url) over WebSockets, against a
    /// floor measured in the same run; prints a table and one JSON line.
    Bench(outpost::bench::BenchArgs),
    /// The bench's floor server (started by `outpost bench`).
    #[command(hide = true)]
    BenchFloor {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value_t = 4096)]
        capacity: usize,
    },
}

#[derive(Args, Default)]
struct ServeArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address (overrides [server] listen).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (overrides [storage] dir).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn load(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_tracing(cfg: &Config, flag: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    // Colours only on a terminal: journald gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match flag.unwrap_or(cfg.log.format) {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            let mut cfg = load(args.config.as_ref())?;
            if let Some(l) = args.listen {
                cfg.server.listen = l;
            }
            if let Some(d) = args.data {
                cfg.storage.dir = d;
            }
            init_tracing(&cfg, cli.log_format);
            let settings = cfg.validate()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(serve(settings))
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            match cfg.validate() {
                Ok(s) => {
                    print!("{}", cfg.effective_toml(&s));
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Token {
            config,
            scope,
            space,
            ttl,
            sub,
        } => {
            let cfg = Config::load(&config)?;
            let s = cfg.validate()?;
            let secret = s
                .jwt_secret
                .context("the config has no auth.jwt_secret or auth.jwt_secret_file")?;
            let ttl = parse_duration(&ttl)
                .map_err(anyhow::Error::msg)
                .context("--ttl")?;
            let spaces = (!space.is_empty()).then_some(space);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let token = Auth::new(Some(&secret), s.anonymous).mint(
                &sub,
                scope,
                spaces,
                ttl.as_secs(),
                now,
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Bench(args) => {
            let rt = runtime()?;
            // The scenarios run on this thread (block_on), which spawns the
            // child relays: their parent-death signal is tied to it.
            let ok = rt.block_on(async {
                tokio::select! {
                    r = outpost::bench::run(args) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                }
            })?;
            if !ok {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::BenchFloor { listen, capacity } => {
            runtime()?.block_on(outpost::bench::scenarios::serve_floor(&listen, capacity))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(settings: Settings) -> Result<()> {
    outpost::memory::tune_allocator();
    let relay = Relay::start(settings).await?;
    announce(relay.addr, &relay);
    // Listeners bound and store open: systemd may now consider us started.
    outpost::notify::service_ready(&relay.state.engine, &format!("listening on {}", relay.addr));
    terminate_signal().await;
    outpost::notify::stopping();
    tracing::info!("shutdown requested; draining connections");
    relay.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// One line on stdout with the bound address (tests and scripts read it,
/// since port 0 picks a free port).
fn announce(addr: SocketAddr, relay: &Relay) {
    tracing::info!(%addr, node = %relay.state.engine.node_id(), data = %relay.state.settings.dir.display(), "outpost listening");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "outpost listening on {addr}");
    let _ = out.flush();
}
