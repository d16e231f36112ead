//! The command line, as clap parses it. It lives in the library so that
//! the man page and the shell completions can be generated from the same
//! definition (`examples/gen-docs.rs`, `tests/manpage.rs`); `main.rs` only
//! runs what was parsed.

use crate::auth::Scope;
use crate::config::LogFormat;
use crate::ops::TargetArgs;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Edge sync relay")]
pub struct Cli {
    /// Log format: plain text lines or JSON objects (overrides [log] format).
    #[arg(long, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the relay (the default with no arguments).
    Serve(ServeArgs),
    /// Validate a config file and print the effective configuration.
    /// Warnings (settings that take no effect, such as a [mesh] section
    /// without `enabled = true`) go to stderr.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Exit with code 2 when there are warnings.
        #[arg(long)]
        strict: bool,
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
    /// Show a running relay's status: overview, spaces, peers, upstream.
    /// Exit code 1 when the relay cannot be reached or refuses.
    Status {
        #[command(flatten)]
        target: TargetArgs,
        /// Print the status document (JSON) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent snapshot of a running relay's entities (state,
    /// stamps, versions) as JSON Lines to stdout or --output.
    Export {
        #[command(flatten)]
        target: TargetArgs,
        /// Only this space.
        #[arg(long)]
        space: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Merge an export (from FILE or stdin) into a running relay.
    Import {
        #[command(flatten)]
        target: TargetArgs,
        /// The export file ("-" or none: stdin).
        file: Option<PathBuf>,
    },
    /// Copy the whole store of a running relay to FILE (a hot backup).
    Backup {
        #[command(flatten)]
        target: TargetArgs,
        file: PathBuf,
    },
    /// Restore a backup FILE into a stopped relay's data dir.
    Restore {
        file: PathBuf,
        /// The data dir [default: --config's storage.dir].
        #[arg(long)]
        data: Option<PathBuf>,
        /// The relay's config file (gives the data dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Replace an existing store (kept as outpost.redb.before-restore).
        #[arg(long)]
        force: bool,
    },
    /// Benchmark: drive child relays (or --url) over WebSockets, against a
    /// floor measured in the same run; prints a table and one JSON line.
    /// (Built with `--features bench`.)
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
    /// The bench's floor server (started by `outpost bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchFloor {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value_t = 4096)]
        capacity: usize,
    },
}

#[derive(Args, Default)]
pub struct ServeArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Listen address (overrides [server] listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (overrides [storage] dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
}
