//! Who may use the console's data feed and the admin API.

use crate::auth::Grant;
use crate::config::Anonymous;
use crate::server::AppState;
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

/// A token with the admin scope (`Authorization: Bearer …` or `?token=`),
/// or no token where `auth.anonymous = "write"` (the loopback default). A
/// refusal is 401 (no or bad token) or 403 (a token without admin).
pub fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Grant, (StatusCode, String)> {
    let token = crate::dialect::token_from(headers, query).filter(|t| !t.is_empty());
    let refuse = |code, why: String| {
        state.engine.metrics.auth_failures.fetch_add(1, Relaxed);
        Err((code, why))
    };
    match token {
        None if state.auth.anonymous() == Anonymous::Write => {
            Ok(Grant::anonymous(Anonymous::Write))
        }
        None => refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized: a token with the admin scope is required\n".into(),
        ),
        Some(t) => match state.auth.verify(&t, crate::dialect::now_s()) {
            Ok(g) if g.is_admin() => Ok(g),
            Ok(_) => refuse(
                StatusCode::FORBIDDEN,
                "forbidden: the token lacks the admin scope\n".into(),
            ),
            Err(e) => refuse(StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n")),
        },
    }
}
