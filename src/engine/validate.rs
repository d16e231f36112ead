//! Input checks shared by every dialect: names, batch and field bounds.

use super::EngineError;
use crate::model::{Change, Op};
use crate::store::LocalWrite;
use serde_json::Value;
use std::collections::BTreeMap;

/// Bounds on what one request may carry.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most changes in one push.
    pub max_batch: usize,
    /// Most fields in one change.
    pub max_fields: usize,
    /// Longest space, collection, id or field name, in bytes.
    pub max_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch: 1000,
            max_fields: 1000,
            max_name_bytes: 256,
        }
    }
}

/// A name (space, collection, id) must be non-empty, bounded, and free of
/// control characters so it can appear in logs, paths and keys.
pub fn validate_name(what: &str, name: &str) -> Result<(), EngineError> {
    check_name(what, name, Limits::default().max_name_bytes).map_err(EngineError::Invalid)
}

fn check_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what}: must not be empty"));
    }
    if name.len() > max {
        return Err(format!("{what}: longer than {max} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what}: contains a control character"));
    }
    Ok(())
}

/// Check one write; the error names the offending field (without a prefix).
pub fn validate_write(limits: &Limits, w: &LocalWrite) -> Result<(), String> {
    check_entity(limits, &w.collection, &w.id, w.op, &w.fields)
}

/// Check a change that arrived from a peer or the upstream: the same rules
/// as a local write, so nothing a client could not store enters this way.
pub fn validate_change(limits: &Limits, c: &Change) -> Result<(), String> {
    check_name("space", &c.space, limits.max_name_bytes)?;
    check_name("actor", &c.actor, limits.max_name_bytes).or_else(|e| {
        if c.actor.is_empty() {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    check_entity(limits, &c.collection, &c.id, c.op, &c.fields)
        .map_err(|e| format!("change {} of origin {}: {e}", c.seq, c.origin))
}

fn check_entity(
    limits: &Limits,
    collection: &str,
    id: &str,
    op: Op,
    fields: &BTreeMap<String, Value>,
) -> Result<(), String> {
    check_name("collection", collection, limits.max_name_bytes)?;
    check_name("id", id, limits.max_name_bytes)?;
    if fields.len() > limits.max_fields {
        return Err(format!(
            "fields: at most {} fields per change",
            limits.max_fields
        ));
    }
    for k in fields.keys() {
        check_name("fields key", k, limits.max_name_bytes)?;
    }
    if op == Op::Delete && !fields.is_empty() {
        return Err("fields: a delete carries no fields".into());
    }
    Ok(())
}
