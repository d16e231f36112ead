//! Writes the man pages and shell completions of `outpost`, generated from
//! its clap definition (`outpost::cli::Cli`), into a directory:
//!
//! ```text
//! cargo run --example gen-docs -- gen-docs
//! ```
//!
//! gives `man/outpost.1` (and `outpost-SUBCOMMAND.1` for each command) and
//! `completions/outpost.bash`, `_outpost` (zsh), `outpost.fish`.
//! `scripts/cross-test.sh` runs it before `cargo deb`, whose assets install
//! them (`[package.metadata.deb]` in Cargo.toml).

use clap::CommandFactory;
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("gen-docs"));
    let n = write_all(&out)?;
    eprintln!("wrote {n} files under {}", out.display());
    Ok(())
}

/// Write everything under `out`; answers how many files.
pub fn write_all(out: &Path) -> std::io::Result<usize> {
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let cmd = outpost::cli::Cli::command();
    // outpost.1 and one page per subcommand (outpost-status.1, ...).
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut n = std::fs::read_dir(&man)?.count();
    use clap_complete::Shell;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "outpost", &comp)?;
        n += 1;
    }
    Ok(n)
}
