//! The engine's error type and its one classification for the wire.
//!
//! Dialects never match on [`EngineError`]'s variants to pick a wire code:
//! they take its [`ErrorClass`] and look it up in their own small table
//! (one per dialect, each with a table test), so a new kind of failure is
//! classified once, here, and every protocol answers it consistently.
//! Socket conditions (a client gone) are not engine errors: the connection
//! driver has its own.

use crate::store::StoreError;
use std::time::Duration;

/// Errors the engine reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    /// A write breaks its collection's schema (`[schemas]` in the config).
    #[error("changes[{index}]: collection `{collection}` schema: {violation}")]
    Schema {
        index: usize,
        collection: String,
        violation: crate::schema::Violation,
    },
    #[error(transparent)]
    Store(StoreError),
    /// Clustered: committed here (durable) but JetStream did not ack it in
    /// time; it is published once JetStream is back.
    #[error("stored on this hub, but the cluster stream did not acknowledge it within {0:?}; it will be published when JetStream is reachable")]
    NotReplicated(Duration),
    /// A failure of the relay itself (a read task that died, a broken
    /// invariant): nothing the client did, nothing it can fix.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            // The writer refused a job on the engine's own check (schemas):
            // give back the engine's error as it was made.
            StoreError::Rejected(r) => match r.downcast::<EngineError>() {
                Ok(e) => *e,
                Err(r) => EngineError::Invalid(r.to_string()),
            },
            e => EngineError::Store(e),
        }
    }
}

/// What an engine error means to a client: the one classification every
/// dialect's wire-code table is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Bad input (a name, a bound, a field): the message says which. Do
    /// not retry as is.
    Invalid,
    /// The write would leave an entity breaking its collection's schema.
    Schema,
    /// A compare-and-swap precondition did not hold (someone wrote first).
    Precondition,
    /// The data disk is (nearly) full: writes resume once space is freed.
    DiskFull,
    /// The store is shutting down or recovering from an I/O error, or a
    /// clustered relay's stream did not acknowledge in time: retry later.
    Unavailable,
    /// Any other failure to read or write the store (or of the relay).
    Storage,
}

impl ErrorClass {
    /// Every class, for the dialects' table tests.
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::Invalid,
        ErrorClass::Schema,
        ErrorClass::Precondition,
        ErrorClass::DiskFull,
        ErrorClass::Unavailable,
        ErrorClass::Storage,
    ];
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Invalid(_) => ErrorClass::Invalid,
            EngineError::Schema { .. } => ErrorClass::Schema,
            EngineError::Store(StoreError::PreconditionFailed { .. }) => ErrorClass::Precondition,
            EngineError::Store(StoreError::DiskFull { .. } | StoreError::NoSpace) => {
                ErrorClass::DiskFull
            }
            EngineError::Store(StoreError::Closed | StoreError::Faulted { .. })
            | EngineError::NotReplicated(_) => ErrorClass::Unavailable,
            EngineError::Store(_) | EngineError::Internal(_) => ErrorClass::Storage,
        }
    }

    /// One engine error of each class, for the dialects' table tests.
    #[cfg(test)]
    pub fn samples() -> Vec<EngineError> {
        vec![
            EngineError::Invalid("changes[0].id: empty".into()),
            EngineError::Schema {
                index: 0,
                collection: "c".into(),
                violation: crate::schema::Violation {
                    field: "f".into(),
                    rule: "required".into(),
                    message: "\"f\" is a required property".into(),
                },
            },
            EngineError::Store(StoreError::PreconditionFailed {
                index: 0,
                found: serde_json::Value::Null,
            }),
            EngineError::Store(StoreError::DiskFull { free_bytes: 1 }),
            EngineError::Store(StoreError::NoSpace),
            EngineError::Store(StoreError::Closed),
            EngineError::Store(StoreError::Faulted {
                cause: "eio".into(),
            }),
            EngineError::NotReplicated(Duration::from_secs(1)),
            EngineError::Store(StoreError::Decode("bad".into())),
            EngineError::Internal("a read task failed".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_one_class_and_every_class_has_errors() {
        let classes: Vec<ErrorClass> = EngineError::samples().iter().map(|e| e.class()).collect();
        use ErrorClass::*;
        assert_eq!(
            classes,
            [
                Invalid,
                Schema,
                Precondition,
                DiskFull,
                DiskFull,
                Unavailable,
                Unavailable,
                Unavailable,
                Storage,
                Storage
            ]
        );
        for c in ErrorClass::ALL {
            assert!(classes.contains(&c), "{c:?} has no sample");
        }
    }
}
