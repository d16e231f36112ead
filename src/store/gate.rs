//! A test seam: parking every store read at its start while a
//! [`ReadHold`] is alive ([`super::Store::hold_reads`]), as a read stuck
//! on a slow disk would wait. Tests use it to show that a slow read holds
//! only its own request, not a runtime worker. The writer does not pass
//! through it. Unheld, it costs a read one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
pub struct ReadGate {
    held: AtomicBool,
    shut: Mutex<bool>,
    open: Condvar,
}

/// Reads wait until this is dropped.
#[doc(hidden)]
pub struct ReadHold(Arc<ReadGate>);

impl ReadGate {
    /// Wait here while reads are held.
    pub fn pass(&self) {
        if !self.held.load(Ordering::Acquire) {
            return;
        }
        let mut shut = self.shut.lock().unwrap_or_else(|e| e.into_inner());
        while *shut {
            shut = self.open.wait(shut).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn hold(self: &Arc<Self>) -> ReadHold {
        *self.shut.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.held.store(true, Ordering::Release);
        ReadHold(self.clone())
    }
}

impl Drop for ReadHold {
    fn drop(&mut self) {
        *self.0.shut.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.held.store(false, Ordering::Release);
        self.0.open.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_held_gate_parks_readers_until_released() {
        let gate = Arc::new(ReadGate::default());
        gate.pass();
        let hold = gate.hold();
        let (tx, rx) = std::sync::mpsc::channel();
        let g = gate.clone();
        let reader = std::thread::spawn(move || {
            g.pass();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(hold);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        reader.join().unwrap();
    }
}
