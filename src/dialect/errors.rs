//! Engine errors on the wire: the one table. A row per [`ErrorClass`], a
//! column per client protocol, so a new class or a changed code is decided
//! for every dialect in one place. Each dialect's `wire` reads its column.

use super::atome;
use crate::engine::ErrorClass;
use axum::http::StatusCode;

/// How each client protocol answers an engine error of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// Native `/ws`: the error frame's `code` and `reason`.
    pub native: (u16, &'static str),
    /// Seeds 000 and 001 (`/ws/sync`, `/ws/atome-sync`) and `/api/atome`:
    /// the HTTP status and the code. The seeds have one code for bad input
    /// and one for everything else.
    pub atome: (u16, &'static str),
    /// Seed 002 (`/ws/config`): the `error` string.
    pub config: &'static str,
    /// Seed 003 (`/v1/sync/{workspace}`): `code` and `reason`; the seed
    /// knows 400 and 500 only.
    pub kv: (u16, &'static str),
    /// Seed 004: the `error` code (sockets) and the HTTP status (its API).
    pub unified: (&'static str, StatusCode),
}

/// The table. Preconditions come only from seed 002's and the atome REST
/// API's compare-and-swap writes; the other columns list them for
/// completeness.
pub fn wire(class: ErrorClass) -> Wire {
    use super::config_sync::code as cfg;
    use super::unified::proto::code as uni;
    match class {
        ErrorClass::Invalid => Wire {
            native: (400, "invalid_field"),
            atome: (400, atome::INVALID),
            config: cfg::INVALID_REQUEST,
            kv: (400, "invalid_field"),
            unified: (uni::INVALID_FIELD, StatusCode::BAD_REQUEST),
        },
        ErrorClass::Schema => Wire {
            native: (400, "invalid_field"),
            atome: (400, atome::INVALID),
            config: cfg::INVALID_REQUEST,
            kv: (400, "invalid_field"),
            unified: (uni::SCHEMA_VIOLATION, StatusCode::BAD_REQUEST),
        },
        ErrorClass::Precondition => Wire {
            native: (409, "precondition_failed"),
            atome: (409, atome::FAILED),
            config: cfg::VERSION_CONFLICT,
            kv: (500, "storage_failed"),
            unified: (uni::STORAGE_FAILED, StatusCode::INTERNAL_SERVER_ERROR),
        },
        ErrorClass::DiskFull => Wire {
            native: (507, "disk_full"),
            atome: (507, atome::FAILED),
            config: cfg::DISK_FULL,
            kv: (500, "disk_full"),
            unified: (uni::DISK_FULL, StatusCode::INSUFFICIENT_STORAGE),
        },
        ErrorClass::Unavailable => Wire {
            native: (503, "unavailable"),
            atome: (503, atome::FAILED),
            config: cfg::UNAVAILABLE,
            kv: (500, "unavailable"),
            unified: (uni::UNAVAILABLE, StatusCode::SERVICE_UNAVAILABLE),
        },
        ErrorClass::Storage => Wire {
            native: (500, "storage_failed"),
            atome: (500, atome::FAILED),
            config: cfg::STORAGE_FAILED,
            kv: (500, "storage_failed"),
            unified: (uni::STORAGE_FAILED, StatusCode::INTERNAL_SERVER_ERROR),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In every column a client can tell "fix the request" from "retry
    /// later": bad input is a 4xx with its own code, every failure of the
    /// relay a 5xx (or, without a status, a code of its own), and a full
    /// disk is told apart wherever the protocol has the words for it.
    #[test]
    fn every_protocol_tells_bad_input_from_a_failing_relay() {
        let bad = [ErrorClass::Invalid, ErrorClass::Schema];
        let failing = [
            ErrorClass::DiskFull,
            ErrorClass::Unavailable,
            ErrorClass::Storage,
        ];
        for b in bad {
            let w = wire(b);
            for (status, _) in [w.native, w.atome, w.kv] {
                assert!((400..500).contains(&status), "{b:?}: {w:?}");
            }
            assert!(w.unified.1.is_client_error(), "{b:?}");
            for f in failing {
                let x = wire(f);
                for (status, _) in [x.native, x.atome, x.kv] {
                    assert!(status >= 500, "{f:?}: {x:?}");
                }
                assert!(x.unified.1.is_server_error(), "{f:?}");
                assert_ne!(w.native.1, x.native.1);
                assert_ne!(w.atome.1, x.atome.1);
                assert_ne!(w.config, x.config);
                assert_ne!(w.kv.1, x.kv.1);
                assert_ne!(w.unified.0, x.unified.0);
            }
        }
        let full = wire(ErrorClass::DiskFull);
        let other = wire(ErrorClass::Storage);
        assert_ne!(full.native, other.native);
        assert_ne!(full.config, other.config);
        assert_ne!(full.kv, other.kv);
        assert_ne!(full.unified, other.unified);
        // The atome seeds have a single failure code; the status differs.
        assert_ne!(full.atome.0, other.atome.0);
    }
}
