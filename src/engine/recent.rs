//! A bounded set of recently seen ids: forwarded events reach a relay once
//! per path through the mesh, and only the first copy is delivered.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

pub struct Recent<T> {
    order: VecDeque<T>,
    set: HashSet<T>,
    cap: usize,
}

impl<T: Copy + Eq + Hash> Recent<T> {
    pub fn new(cap: usize) -> Self {
        Recent {
            order: VecDeque::with_capacity(cap),
            set: HashSet::with_capacity(cap),
            cap: cap.max(1),
        }
    }

    /// Record `id`; false if it was already there (a duplicate).
    pub fn insert(&mut self, id: T) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_its_bound() {
        let mut r = Recent::new(2);
        assert!(r.insert(1));
        assert!(!r.insert(1));
        assert!(r.insert(2));
        assert!(r.insert(3)); // evicts 1
        assert!(r.insert(1));
        assert!(!r.insert(3));
    }
}
