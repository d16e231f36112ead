//! Admission of new TCP connections, before a byte is read: a permit of the
//! relay-wide connection semaphore (`server.max_connections`), one of the
//! handshake semaphore (`server.max_handshakes`) until the first request is
//! dispatched, and per-address counts of both. Permits, not counters
//! compared and then bumped, so concurrent accepts cannot overshoot.
//!
//! [`Bound`] is one such limit, in all and per address; the mesh bounds its
//! QUIC handshakes with one too.
//!
//! IPv6 addresses count per /64: one host commonly holds a whole /64, so
//! counting single addresses would not bound it.

use super::stats::{NetStats, Refusal};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections: usize,
    pub handshakes: usize,
    pub connections_per_ip: usize,
    pub handshakes_per_ip: usize,
}

/// The key an address counts under.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A bound on things held at once, in all and per address (the mesh's
/// QUIC handshakes, and each half of [`Admission`]): a semaphore permit and
/// a per-address count, taken together or not at all.
pub struct Bound {
    permits: Arc<Semaphore>,
    per_ip: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// Which part of a [`Bound`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Every permit is held.
    Total,
    /// This address holds its share.
    PerIp,
}

/// One place in a [`Bound`], given back when dropped.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    owner: Arc<Bound>,
    key: IpAddr,
}

impl Bound {
    pub fn new(total: usize, per_ip: usize) -> Arc<Bound> {
        Arc::new(Bound {
            permits: Arc::new(Semaphore::new(total)),
            per_ip,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `ip`, or which part is full.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Held, Full> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Total)?;
        let key = ip_key(ip);
        let mut table = self.table();
        let n = table.entry(key).or_default();
        if *n >= self.per_ip {
            return Err(Full::PerIp);
        }
        *n += 1;
        Ok(Held {
            _permit: permit,
            owner: self.clone(),
            key,
        })
    }

    /// Addresses holding a place (bounded by the total).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.table().len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut table = self.owner.table();
        if let Some(n) = table.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

pub struct Admission {
    connections: Arc<Bound>,
    handshakes: Arc<Bound>,
    stats: Arc<NetStats>,
}

/// Held for as long as the connection's socket is open.
pub struct ConnSlot {
    _held: Held,
    stats: Arc<NetStats>,
}

/// Held until the connection's first request is dispatched (or it closes).
pub struct HandshakeSlot {
    _held: Held,
    stats: Arc<NetStats>,
}

impl Admission {
    pub fn new(limits: Limits, stats: Arc<NetStats>) -> Arc<Admission> {
        stats
            .max_connections
            .store(limits.connections as u64, Relaxed);
        Arc::new(Admission {
            connections: Bound::new(limits.connections, limits.connections_per_ip),
            handshakes: Bound::new(limits.handshakes, limits.handshakes_per_ip),
            stats,
        })
    }

    /// Admit a connection from `ip`, or say which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(ConnSlot, HandshakeSlot), Refusal> {
        let conn = self.connections.take(ip).map_err(|f| match f {
            Full::Total => Refusal::MaxConnections,
            Full::PerIp => Refusal::PerIpConnections,
        })?;
        let hs = self.handshakes.take(ip).map_err(|f| match f {
            Full::Total => Refusal::MaxHandshakes,
            Full::PerIp => Refusal::PerIpHandshakes,
        })?;
        self.stats.open.fetch_add(1, Relaxed);
        self.stats.handshaking.fetch_add(1, Relaxed);
        Ok((
            ConnSlot {
                _held: conn,
                stats: self.stats.clone(),
            },
            HandshakeSlot {
                _held: hs,
                stats: self.stats.clone(),
            },
        ))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.stats.handshaking.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(c: usize, h: usize, cip: usize, hip: usize) -> Arc<Admission> {
        Admission::new(
            Limits {
                connections: c,
                handshakes: h,
                connections_per_ip: cip,
                handshakes_per_ip: hip,
            },
            Arc::new(NetStats::default()),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_limit_refuses_and_frees_on_drop() {
        let a = admission(3, 2, 2, 1);
        let (c1, h1) = a.admit(ip("10.0.0.1")).unwrap();
        // Per-IP handshakes: the same address may not start a second one.
        assert_eq!(
            a.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PerIpHandshakes)
        );
        drop(h1);
        let (c2, h2) = a.admit(ip("10.0.0.1")).unwrap();
        drop(h2);
        // Per-IP connections: two open from 10.0.0.1.
        assert_eq!(
            a.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PerIpConnections)
        );
        let (c3, h3) = a.admit(ip("10.0.0.2")).unwrap();
        // All three connection permits taken.
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::MaxConnections));
        drop((c1, c2));
        let (_c4, _h4) = a.admit(ip("10.0.0.4")).unwrap();
        // Two handshakes in flight (h3, _h4): the global handshake limit.
        assert_eq!(a.admit(ip("10.0.0.5")).err(), Some(Refusal::MaxHandshakes));
        drop((c3, h3));
        assert_eq!(
            (a.connections.addresses(), a.handshakes.addresses()),
            (1, 1),
            "entries go when their last slot does"
        );
        assert_eq!(a.stats.open.load(Relaxed), 1);
        assert_eq!(a.stats.handshaking.load(Relaxed), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a = admission(10, 10, 10, 1);
        let _x = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::PerIpHandshakes)
        );
        let _y = a.admit(ip("2001:db8:1:3::1")).unwrap();
        let _z = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            a.admit(ip("::ffff:192.0.2.1")).err(),
            Some(Refusal::PerIpHandshakes)
        );
    }
}
