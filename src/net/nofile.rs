//! File descriptors: every connection is one, so `server.max_connections`
//! must fit under RLIMIT_NOFILE or `accept` starts failing (EMFILE) long
//! before the limit the operator configured. At start the soft limit is
//! raised to the hard one (systemd's default soft limit is 1024; the unit
//! sets `LimitNOFILE=` so no raise is needed there), then the connection
//! limit is clamped, with a warning, to what fits beside a reserve for the
//! store, the runtime, the mesh, upstream and webhook sockets, and the
//! listener's refusal lane.

/// Descriptors kept for everything that is not a client connection.
pub const RESERVE: u64 = 128;
/// Below this many client connections the relay would be useless: refuse
/// to start instead of clamping.
pub const MIN_CONNECTIONS: usize = 16;

/// The soft limit after trying to raise it to the hard limit.
pub fn raise() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return u64::MAX; // unknown: do not clamp on a guess
        }
        // The kernel refuses more than fs.nr_open (1 << 20 by default),
        // and RLIM_INFINITY is more than that.
        let target = (lim.rlim_max as u64).min(1 << 20);
        if (lim.rlim_cur as u64) < target {
            let want = libc::rlimit {
                rlim_cur: target as libc::rlim_t,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return target;
            }
            tracing::warn!(
                soft = lim.rlim_cur as u64,
                hard = lim.rlim_max as u64,
                error = %std::io::Error::last_os_error(),
                "cannot raise the file descriptor limit"
            );
        }
        lim.rlim_cur as u64
    }
}

/// How many connections fit `nofile` descriptors, if fewer than asked.
/// Err when not even [`MIN_CONNECTIONS`] do.
pub fn fit(max_connections: usize, nofile: u64) -> Result<usize, u64> {
    let room = nofile.saturating_sub(RESERVE);
    if room >= max_connections as u64 {
        return Ok(max_connections);
    }
    if room < MIN_CONNECTIONS as u64 {
        return Err(nofile);
    }
    Ok(room as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_beside_the_reserve() {
        assert_eq!(fit(4096, 8192), Ok(4096));
        assert_eq!(fit(4096, 1024), Ok(1024 - RESERVE as usize));
        assert_eq!(fit(4096, u64::MAX), Ok(4096));
        assert_eq!(fit(4096, 100), Err(100));
        assert_eq!(fit(10, RESERVE + 10), Ok(10));
    }
}
