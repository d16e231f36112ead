//! Who may read the relay's status and use the admin API: one rule for
//! `/v1/status`, `/metrics`, the status page's feed and the CLI.

use crate::app::AppState;
use crate::auth::Grant;
use crate::config::Anonymous;
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

/// What the endpoint exposes or does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reads what any reader could read (status, metrics, export): open
    /// when anonymous clients may read (`auth.anonymous` "read" or
    /// "write"), else a token with the admin scope.
    Read,
    /// Writes, or copies the whole store (import, backup): open when
    /// anonymous clients may write (the loopback default), else admin.
    Write,
}

/// A present token must verify (401 if not), whatever anonymous access
/// allows. Then: the admin scope, or anonymous access at the needed level,
/// passes; anything else is 401 (no token) or 403 (a weaker token).
pub fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    need: Need,
) -> Result<Grant, (StatusCode, String)> {
    let refuse = |code, why: String| {
        state.engine.metrics.auth_failures.fetch_add(1, Relaxed);
        Err((code, why))
    };
    let token = crate::auth::token_from(headers, query).filter(|t| !t.is_empty());
    let open = matches!(
        (state.auth.anonymous(), need),
        (Anonymous::Write, _) | (Anonymous::Read, Need::Read)
    );
    let grant = match token {
        None if open => return Ok(Grant::anonymous(state.auth.anonymous())),
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized: a token with the admin scope is required\n".into(),
            )
        }
        Some(t) => match state.auth.verify(&t, crate::auth::now_s()) {
            Ok(g) => g,
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n")),
        },
    };
    if grant.is_admin() || open {
        return Ok(grant);
    }
    refuse(
        StatusCode::FORBIDDEN,
        "forbidden: this endpoint needs a token with admin scope\n".into(),
    )
}
