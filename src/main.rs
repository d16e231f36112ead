//! The `outpost` command line: parse, set up logging, load config, run.

// build.rs links the static aarch64 release binary without unwind tables
// (link/no-eh-frame.ld); that is sound only if nothing unwinds.
#[cfg(all(outpost_no_eh_frame, not(panic = "abort")))]
compile_error!("link/no-eh-frame.ld needs panic = \"abort\" (the release profile's)");

// The relay's hot paths allocate per change and per frame (redb's page
// buffers, rendered frames). musl's malloc, in the static Pi binary, took
// twice glibc's CPU per change there, and mimalloc beats both
// (docs/performance.md, "The allocator"). Only the binary: the library
// leaves the choice to whoever embeds it. `memory::no_huge_pages` keeps its
// RSS within the Pi budgets. 64-bit targets only (Cargo.toml says why).
#[cfg(target_pointer_width = "64")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::Parser;
use outpost::app::{terminate_signal, Relay};
use outpost::auth::Auth;
use outpost::cli::{Cli, Command, ServeArgs};
use outpost::config::{parse_duration, Config, LogFormat, Settings};
use outpost::ops::OpsError;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

fn load(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_tracing(cfg: &Config, flag: Option<LogFormat>) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    // Colours only on a terminal: journald gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match flag.unwrap_or(cfg.log.format) {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // The status page's ring of recent warnings and errors keeps its own
    // level, whatever the log level is.
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(outpost::app::console::logring::RingLayer.with_filter(LevelFilter::WARN))
        .init();
}

fn main() -> Result<()> {
    outpost::memory::no_huge_pages();
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
            for w in cfg.warnings() {
                tracing::warn!("config: {w}");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(serve(settings))
        }
        Command::CheckConfig { config, strict } => {
            let cfg = Config::load(&config)?;
            match cfg.validate() {
                Ok(s) => {
                    let warnings = cfg.warnings();
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    print!("{}", s.effective_toml);
                    if strict && !warnings.is_empty() {
                        std::process::exit(2);
                    }
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
        #[cfg(feature = "bench")]
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
        Command::Status { target, json } => ops(async {
            let t = outpost::ops::target(&target)?;
            print!("{}", outpost::ops::status(&t, json).await?);
            Ok(())
        }),
        Command::Export {
            target,
            space,
            output,
        } => ops(async {
            let t = outpost::ops::target(&target)?;
            let n = match output {
                Some(p) => {
                    let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
                    let n = outpost::ops::export(&t, space.as_deref(), &mut f).await?;
                    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    n
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    outpost::ops::export(&t, space.as_deref(), &mut out).await?
                }
            };
            eprintln!("exported {n} entities");
            Ok(())
        }),
        Command::Import { target, file } => ops(async {
            let t = outpost::ops::target(&target)?;
            let r = match file.filter(|f| f.as_os_str() != "-") {
                Some(p) => {
                    let f = tokio::fs::File::open(&p).await.map_err(|e| {
                        OpsError::Usage(format!("cannot open {}: {e}", p.display()))
                    })?;
                    outpost::ops::import(&t, f).await?
                }
                None => outpost::ops::import(&t, tokio::io::stdin()).await?,
            };
            eprintln!(
                "imported {} entities",
                r["entities"].as_u64().unwrap_or_default()
            );
            Ok(())
        }),
        Command::Backup { target, file } => ops(async {
            let t = outpost::ops::target(&target)?;
            let s = outpost::ops::backup(&t, &file).await?;
            eprintln!(
                "backup of node {} at seq {} ({} rows) written to {}",
                s.node,
                s.last_seq,
                s.rows,
                file.display()
            );
            Ok(())
        }),
        Command::Restore {
            file,
            data,
            config,
            force,
        } => {
            let dir = match (data, config) {
                (Some(d), _) => d,
                (None, Some(c)) => Config::load(&c)?.storage.dir,
                (None, None) => {
                    eprintln!("error: say where to restore: --data DIR or --config FILE");
                    std::process::exit(1);
                }
            };
            match outpost::ops::restore(&file, &dir, force) {
                Ok((s, r)) => {
                    eprintln!(
                        "restored node {} at seq {} into {}: {} log entries, {} entities, {} spaces; checks passed",
                        s.node,
                        s.last_seq,
                        dir.display(),
                        r.log,
                        r.entities,
                        r.spaces
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        #[cfg(feature = "bench")]
        Command::BenchFloor { listen, capacity } => {
            runtime()?.block_on(outpost::bench::scenarios::serve_floor(&listen, capacity))
        }
    }
}

/// Run an operator command; any error is printed and exits with code 1.
fn ops(f: impl std::future::Future<Output = Result<(), OpsError>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Err(e) = rt.block_on(f) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    Ok(())
}

/// The runtime of `outpost bench` and its floor server.
#[cfg(feature = "bench")]
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
    let ready = format!("listening on {}", relay.addr);
    if let Some(watchdog) = outpost::notify::service_ready(&relay.state.engine, &ready) {
        relay.tasks().spawn_until_stop("watchdog", watchdog);
    }
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
