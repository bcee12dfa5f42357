//! The id allocator: store, region and peer ids, unique for the life of the
//! cluster.
//!
//! Ids are handed out from a window `[next, end)` whose `end` was made
//! durable (a `Command::AllocIdWindow`) before the first id of the window
//! left PD. A restarted PD starts at the persisted `end`, so it skips the
//! unused rest of the old window and never repeats an id. Sans-IO: the
//! allocator says when a window must be persisted; the caller persists it.

/// Ids per persisted window (PD's default).
pub const ID_WINDOW: u64 = 1000;

/// Hands out ids from the current window.
#[derive(Clone, Debug)]
pub struct IdAllocator {
    next: u64,
    end: u64,
}

impl IdAllocator {
    /// An allocator after a (re)start with `persisted_end` as the saved
    /// window end (0 for a new cluster). Id 0 is never issued: it means "none".
    pub fn new(persisted_end: u64) -> Self {
        IdAllocator { next: persisted_end.max(1), end: persisted_end }
    }

    /// The next id, or `None` if a new window must be persisted first (see
    /// [`IdAllocator::next_window_end`] and [`IdAllocator::extend`]).
    pub fn try_alloc(&mut self) -> Option<u64> {
        if self.next >= self.end {
            return None;
        }
        let id = self.next;
        self.next += 1;
        Some(id)
    }

    /// Ids left in the current window.
    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }

    /// The window end to persist when [`IdAllocator::try_alloc`] returned `None`.
    pub fn next_window_end(&self) -> u64 {
        self.next.max(self.end) + ID_WINDOW
    }

    /// Records that `end` is now durable.
    pub fn extend(&mut self, end: u64) {
        self.end = self.end.max(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(a: &mut IdAllocator, persisted: &mut u64) -> u64 {
        loop {
            if let Some(id) = a.try_alloc() {
                assert!(id < *persisted, "id {id} handed out beyond the durable end {persisted}");
                return id;
            }
            *persisted = a.next_window_end();
            a.extend(*persisted);
        }
    }

    #[test]
    fn ids_are_unique_across_restarts() {
        let mut persisted = 0;
        let mut a = IdAllocator::new(persisted);
        let first: Vec<u64> = (0..1500).map(|_| alloc(&mut a, &mut persisted)).collect();
        assert_eq!(first[0], 1);
        assert_eq!(persisted, 2001);
        // Restart: the rest of the second window is skipped.
        let mut b = IdAllocator::new(persisted);
        let next = alloc(&mut b, &mut persisted);
        assert_eq!(next, 2001);
        assert!(first.iter().all(|&id| id < next));
    }
}
