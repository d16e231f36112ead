//! JWT (HS256 on ring's HMAC) and scopes.
//!
//! Hand-written rather than a JWT crate: HS256 is one HMAC and two base64
//! strings, and jsonwebtoken 10 has no ring backend (it would pull aws-lc or
//! a second crypto stack onto a Pi build).

use crate::config::Anonymous;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("only HS256 tokens are accepted")]
    Algorithm,
    #[error("this relay has no JWT secret configured, so it accepts no tokens")]
    NoSecret,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

/// `scope` may be a space-separated string or an array of strings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    scope: ScopeClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spaces: Option<Vec<String>>,
}

/// What a connection may do: the strongest scope it holds, and the spaces
/// it is limited to (None: all).
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub sub: String,
    pub scope: Option<Scope>,
    pub spaces: Option<Vec<String>>,
}

impl Grant {
    pub fn anonymous(a: Anonymous) -> Grant {
        Grant {
            sub: "anonymous".into(),
            scope: match a {
                Anonymous::None => None,
                Anonymous::Read => Some(Scope::Read),
                Anonymous::Write => Some(Scope::Write),
            },
            spaces: None,
        }
    }

    fn in_space(&self, space: &str) -> bool {
        self.spaces
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == space))
    }

    pub fn can_read(&self, space: &str) -> bool {
        self.scope.is_some() && self.in_space(space)
    }

    pub fn can_write(&self, space: &str) -> bool {
        self.scope >= Some(Scope::Write) && self.in_space(space)
    }

    pub fn is_admin(&self) -> bool {
        self.scope == Some(Scope::Admin)
    }

    /// Scope names held, weakest first (admin implies write implies read).
    pub fn scope_names(&self) -> Vec<&'static str> {
        let all = [
            (Scope::Read, "read"),
            (Scope::Write, "write"),
            (Scope::Admin, "admin"),
        ];
        all.iter()
            .filter(|(s, _)| Some(*s) <= self.scope)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// Seconds since the epoch, for token expiry.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The token of a request: `Authorization: Bearer …`, else `?token=`.
pub fn token_from(
    headers: &axum::http::HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .or_else(|| query.get("token").cloned())
}

#[derive(Clone)]
pub struct Auth {
    key: Option<ring::hmac::Key>,
    anonymous: Anonymous,
}

impl Auth {
    pub fn new(secret: Option<&[u8]>, anonymous: Anonymous) -> Auth {
        Auth {
            key: secret.map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s)),
            anonymous,
        }
    }

    pub fn anonymous(&self) -> Anonymous {
        self.anonymous
    }

    /// Admit a connection: a token must verify; no token gets the anonymous
    /// grant, if anonymous access is on.
    pub fn admit(&self, token: Option<&str>, now_s: u64) -> Result<Grant, AuthError> {
        match token.filter(|t| !t.is_empty()) {
            Some(t) => self.verify(t, now_s),
            None if self.anonymous != Anonymous::None => Ok(Grant::anonymous(self.anonymous)),
            None => Err(AuthError::Missing),
        }
    }

    pub fn verify(&self, token: &str, now_s: u64) -> Result<Grant, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoSecret)?;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(h).map_err(|_| AuthError::Malformed)?)
                .map_err(|_| AuthError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(AuthError::Algorithm);
        }
        let sig = B64.decode(sig).map_err(|_| AuthError::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        ring::hmac::verify(key, signed.as_bytes(), &sig).map_err(|_| AuthError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&B64.decode(p).map_err(|_| AuthError::Malformed)?)
                .map_err(|_| AuthError::Malformed)?;
        if claims.exp <= now_s {
            return Err(AuthError::Expired);
        }
        let names: Vec<String> = match claims.scope {
            ScopeClaim::Text(s) => s.split_whitespace().map(str::to_string).collect(),
            ScopeClaim::List(v) => v,
        };
        let scope = names
            .iter()
            .filter_map(|n| match n.as_str() {
                "read" => Some(Scope::Read),
                "write" => Some(Scope::Write),
                "admin" => Some(Scope::Admin),
                _ => None,
            })
            .max();
        Ok(Grant {
            sub: claims.sub,
            scope,
            spaces: claims.spaces,
        })
    }

    /// Mint a token (the `outpost token` command, and tests).
    pub fn mint(
        &self,
        sub: &str,
        scope: Scope,
        spaces: Option<Vec<String>>,
        ttl_s: u64,
        now_s: u64,
    ) -> Result<String, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoSecret)?;
        let name = match scope {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        };
        let claims = Claims {
            sub: sub.to_string(),
            exp: now_s + ttl_s,
            iat: Some(now_s),
            scope: ScopeClaim::Text(name.into()),
            spaces,
        };
        let head = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = B64.encode(serde_json::to_vec(&claims).map_err(|_| AuthError::Malformed)?);
        let signed = format!("{head}.{body}");
        let sig = ring::hmac::sign(key, signed.as_bytes());
        Ok(format!("{signed}.{}", B64.encode(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(Some(b"0123456789abcdef"), Anonymous::None)
    }

    #[test]
    fn mint_then_verify() {
        let a = auth();
        let t = a
            .mint("ann", Scope::Write, Some(vec!["home".into()]), 60, 1000)
            .unwrap();
        let g = a.verify(&t, 1001).unwrap();
        assert_eq!(g.sub, "ann");
        assert!(g.can_write("home") && !g.can_write("work") && !g.is_admin());
        assert_eq!(g.scope_names(), vec!["read", "write"]);
    }

    #[test]
    fn rejects_expired_tampered_and_foreign() {
        let a = auth();
        let t = a.mint("ann", Scope::Read, None, 60, 1000).unwrap();
        assert_eq!(a.verify(&t, 2000), Err(AuthError::Expired));
        let mut bad = t.clone();
        bad.pop();
        bad.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(a.verify(&bad, 1001), Err(AuthError::BadSignature));
        let other = Auth::new(Some(b"another-secret-xyz"), Anonymous::None);
        assert_eq!(other.verify(&t, 1001), Err(AuthError::BadSignature));
        assert_eq!(a.verify("a.b", 1), Err(AuthError::Malformed));
    }

    #[test]
    fn scope_array_and_anonymous() {
        let a = auth();
        assert_eq!(a.admit(None, 0), Err(AuthError::Missing));
        let w = Auth::new(None, Anonymous::Read).admit(None, 0).unwrap();
        assert!(w.can_read("x") && !w.can_write("x"));
        // An array-valued scope claim verifies too.
        let head = B64.encode(br#"{"alg":"HS256"}"#);
        let body = B64.encode(br#"{"sub":"s","exp":99,"scope":["read","admin"]}"#);
        let signed = format!("{head}.{body}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef");
        let sig = B64.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref());
        let g = a.verify(&format!("{signed}.{sig}"), 1).unwrap();
        assert!(g.is_admin());
    }
}
