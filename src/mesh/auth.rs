//! Mesh membership. After the QUIC/TLS handshake each side sends
//! HMAC-SHA256(secret, label ‖ role ‖ EKM), where EKM is keying material
//! exported from this TLS session (RFC 5705). A proof is only valid for the
//! session it was made in (no replay), for the role that made it (no
//! reflection), and only by someone holding the secret.
//!
//! The mDNS tag is derived from the secret the same way, so relays can tell
//! their mesh apart on a LAN without revealing the secret.

use ring::hmac;

const LABEL: &[u8] = b"outpost mesh membership v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Dialer => b'd',
            Role::Acceptor => b'a',
        }
    }
}

pub struct Membership {
    key: hmac::Key,
}

impl Membership {
    pub fn new(secret: &[u8]) -> Self {
        Membership {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The label to export keying material with.
    pub fn ekm_label() -> &'static [u8] {
        LABEL
    }

    pub fn prove(&self, role: Role, ekm: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, &message(role, ekm)).as_ref().to_vec()
    }

    /// Constant-time check of the peer's proof.
    pub fn verify(&self, role: Role, ekm: &[u8], proof: &[u8]) -> bool {
        hmac::verify(&self.key, &message(role, ekm), proof).is_ok()
    }

    /// A public tag naming this mesh in mDNS adverts.
    pub fn tag(&self) -> String {
        let t = hmac::sign(&self.key, b"outpost mesh tag v1");
        t.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn message(role: Role, ekm: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL.len() + 1 + ekm.len());
    m.extend_from_slice(LABEL);
    m.push(role.byte());
    m.extend_from_slice(ekm);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_session_and_role() {
        let m = Membership::new(b"0123456789abcdef");
        let other = Membership::new(b"fedcba9876543210");
        let p = m.prove(Role::Dialer, b"session-1");
        assert!(m.verify(Role::Dialer, b"session-1", &p));
        assert!(!m.verify(Role::Dialer, b"session-2", &p), "replayed");
        assert!(!m.verify(Role::Acceptor, b"session-1", &p), "reflected");
        assert!(
            !other.verify(Role::Dialer, b"session-1", &p),
            "wrong secret"
        );
        assert!(!m.verify(Role::Dialer, b"session-1", b"short"));
    }

    #[test]
    fn the_tag_reveals_nothing_but_identifies_the_mesh() {
        let a = Membership::new(b"0123456789abcdef");
        assert_eq!(a.tag(), Membership::new(b"0123456789abcdef").tag());
        assert_ne!(a.tag(), Membership::new(b"0123456789abcdeX").tag());
        assert_eq!(a.tag().len(), 16);
        assert!(!a.tag().contains("0123"));
    }
}
