//! Operator commands that talk to a running relay over its admin HTTP API
//! (`outpost status`, `export`, `import`, `backup`), plus `restore`, which
//! works on a stopped relay's data dir. `main.rs` only parses arguments.

mod client;
mod table;

pub use client::{target, Target, TargetArgs};
pub use table::render_status;

use crate::store::{BackupSummary, CheckReport};
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Reaching the relay's admin API failed (unreachable, refused, a
    /// bad URL or TLS setting): `net::client` words it.
    #[error(transparent)]
    Client(#[from] crate::net::client::ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Restore(#[from] crate::store::RestoreError),
    #[error("the relay's answer is not what was expected: {0}")]
    Protocol(String),
}

/// `outpost status`: the table, or the document itself with `json`.
pub async fn status(t: &Target, json: bool) -> Result<String, OpsError> {
    let body = t.get_bytes("/v1/status").await?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| OpsError::Protocol(e.to_string()))?;
    Ok(if json {
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        render_status(&v, crate::engine::now_ms())
    })
}

/// `outpost export`: the JSON Lines export to `out`; fails unless the
/// export ended with its end line (a relay that died midway).
pub async fn export(t: &Target, space: Option<&str>, out: &mut dyn Write) -> Result<u64, OpsError> {
    let path = match space {
        Some(s) => format!("/v1/export?space={}", urlencode(s)),
        None => "/v1/export".into(),
    };
    let mut last_line = Vec::new();
    t.get_stream(&path, |chunk| {
        out.write_all(chunk)?;
        // Keep the tail, to find the last line at the end.
        last_line.extend_from_slice(chunk);
        if last_line.len() > 4096 {
            let cut = last_line.len() - 4096;
            last_line.drain(..cut);
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    let text = String::from_utf8_lossy(&last_line);
    let end = text.trim_end().rsplit('\n').next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(end).unwrap_or_default();
    if v["type"] != "end" {
        return Err(OpsError::Protocol(
            "the export ended without its end line".into(),
        ));
    }
    Ok(v["entities"].as_u64().unwrap_or(0))
}

/// `outpost import`: stream `input` (an export) to the relay.
pub async fn import(
    t: &Target,
    input: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> Result<serde_json::Value, OpsError> {
    let body = t.post_stream("/v1/import", input).await?;
    serde_json::from_slice(&body).map_err(|e| OpsError::Protocol(e.to_string()))
}

/// `outpost backup FILE`: the running relay's backup stream, checked as it
/// arrives and written to `FILE` (via a temporary file and an fsync, so
/// `FILE` is either the whole backup or absent).
pub async fn backup(t: &Target, file: &Path) -> Result<BackupSummary, OpsError> {
    let tmp = file.with_extension("partial");
    let result = async {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        t.get_stream("/v1/backup", |chunk| f.write_all(chunk))
            .await?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let summary =
            crate::store::verify_backup(&mut std::io::BufReader::new(std::fs::File::open(&tmp)?))?;
        std::fs::rename(&tmp, file)?;
        Ok::<_, OpsError>(summary)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `outpost restore FILE`: see `store::restore` (the relay must be stopped).
pub fn restore(
    file: &Path,
    dir: &Path,
    force: bool,
) -> Result<(BackupSummary, CheckReport), OpsError> {
    let mut input = std::io::BufReader::new(
        std::fs::File::open(file)
            .map_err(|e| OpsError::Usage(format!("cannot open {}: {e}", file.display())))?,
    );
    Ok(crate::store::restore(&mut input, dir, force)?)
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
