//! The timestamp oracle: strictly increasing 64-bit timestamps,
//! `physical_ms << 18 | logical`.
//!
//! Safety across restarts (and, later, leader changes) rests on one rule:
//! **no timestamp is handed out whose physical part is at or above the saved
//! bound**. The bound is made durable (`Command::TsoWindow`) about
//! [`SAVE_WINDOW`] ahead of the clock; a restarted PD starts its physical
//! clock at the saved bound, above everything issued before.
//!
//! Within one process the physical part follows the wall clock but never
//! goes back (a clock stepping backwards just stalls it), and when 2^18
//! logical values are used up in one millisecond it borrows the next
//! millisecond. Sans-IO: [`TsoAllocator::alloc`] asks for a save when needed.

use std::time::{Duration, UNIX_EPOCH};

/// Bits of the logical part.
pub const LOGICAL_BITS: u32 = 18;
/// Timestamps available per millisecond.
pub const MAX_LOGICAL: u64 = 1 << LOGICAL_BITS;
/// How far ahead of the physical time the saved bound is placed (PD: 3 s).
pub const SAVE_WINDOW: Duration = Duration::from_secs(3);
/// The bound is renewed once the physical time is this close to it, so a
/// steadily used TSO saves about every 2 s and rarely waits for a save.
pub const SAVE_MARGIN: Duration = Duration::from_secs(1);

/// A decoded timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch.
    pub physical_ms: u64,
    /// Counter within the millisecond, `< 2^18`.
    pub logical: u64,
}

impl Timestamp {
    /// The 64-bit form `physical_ms << 18 | logical`.
    pub fn compose(self) -> u64 {
        (self.physical_ms << LOGICAL_BITS) | self.logical
    }

    /// Splits a 64-bit timestamp.
    pub fn decode(ts: u64) -> Timestamp {
        Timestamp { physical_ms: ts >> LOGICAL_BITS, logical: ts & (MAX_LOGICAL - 1) }
    }

    /// The physical part as a UTC time string (`2024-05-01T12:00:00.123Z`).
    pub fn physical_time(self) -> String {
        crate::time::format_rfc3339_ms(UNIX_EPOCH + Duration::from_millis(self.physical_ms))
    }
}

/// What [`TsoAllocator::alloc`] needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsoStep {
    /// Allocated; this is the **last** timestamp of the range.
    Ready(Timestamp),
    /// Persist this physical bound (ms), call [`TsoAllocator::saved`], retry.
    NeedSave {
        /// The new bound, milliseconds since the Unix epoch.
        bound_ms: u64,
    },
}

/// The allocator's state.
#[derive(Clone, Debug)]
pub struct TsoAllocator {
    physical_ms: u64,
    next_logical: u64,
    saved_bound_ms: u64,
}

impl TsoAllocator {
    /// An allocator after a (re)start with `saved_bound_ms` durable (0 for a
    /// new cluster). Everything issued before had a smaller physical part.
    pub fn new(saved_bound_ms: u64) -> Self {
        TsoAllocator { physical_ms: saved_bound_ms, next_logical: 0, saved_bound_ms }
    }

    /// Allocates `count` (1..=2^18) consecutive timestamps at wall time
    /// `now_ms`, or asks for a save first.
    pub fn alloc(&mut self, count: u32, now_ms: u64) -> TsoStep {
        let count = u64::from(count);
        assert!((1..=MAX_LOGICAL).contains(&count), "tso count {count} out of range; callers validate");
        let (mut physical, mut logical) = (self.physical_ms, self.next_logical);
        if now_ms > physical {
            (physical, logical) = (now_ms, 0);
        }
        if logical + count > MAX_LOGICAL {
            (physical, logical) = (physical + 1, 0);
        }
        if physical + SAVE_MARGIN.as_millis() as u64 >= self.saved_bound_ms {
            return TsoStep::NeedSave { bound_ms: physical + SAVE_WINDOW.as_millis() as u64 };
        }
        self.physical_ms = physical;
        self.next_logical = logical + count;
        TsoStep::Ready(Timestamp { physical_ms: physical, logical: logical + count - 1 })
    }

    /// Records that `bound_ms` is durable.
    pub fn saved(&mut self, bound_ms: u64) {
        self.saved_bound_ms = self.saved_bound_ms.max(bound_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates like the server does: save when asked, then retry.
    fn alloc(t: &mut TsoAllocator, saved: &mut u64, count: u32, now_ms: u64) -> Timestamp {
        loop {
            match t.alloc(count, now_ms) {
                TsoStep::Ready(ts) => {
                    assert!(ts.physical_ms < *saved, "issued {ts:?} at or above the saved bound {saved}");
                    return ts;
                }
                TsoStep::NeedSave { bound_ms } => {
                    *saved = bound_ms;
                    t.saved(bound_ms);
                }
            }
        }
    }

    #[test]
    fn strictly_increasing_even_when_the_clock_stalls_or_steps_back() {
        let mut saved = 0;
        let mut t = TsoAllocator::new(saved);
        let mut last = 0;
        for now in [1_000, 1_000, 999, 500, 1_001, 1_001] {
            let ts = alloc(&mut t, &mut saved, 10, now).compose();
            assert!(ts > last, "{ts} <= {last}");
            last = ts;
        }
    }

    #[test]
    fn count_and_last_of_range() {
        let mut saved = 0;
        let mut t = TsoAllocator::new(saved);
        let a = alloc(&mut t, &mut saved, 5, 2_000);
        assert_eq!(a, Timestamp { physical_ms: 2_000, logical: 4 });
        let b = alloc(&mut t, &mut saved, 3, 2_000);
        assert_eq!(b, Timestamp { physical_ms: 2_000, logical: 7 });
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let mut saved = 0;
        let mut t = TsoAllocator::new(saved);
        alloc(&mut t, &mut saved, (MAX_LOGICAL - 1) as u32, 3_000);
        let ts = alloc(&mut t, &mut saved, 2, 3_000);
        assert_eq!(ts, Timestamp { physical_ms: 3_001, logical: 1 });
    }

    #[test]
    fn a_restart_starts_above_everything_issued() {
        let mut saved = 0;
        let mut t = TsoAllocator::new(saved);
        let before = alloc(&mut t, &mut saved, 1, 10_000).compose();
        // The clock is now behind what was issued (e.g. the machine's clock
        // was reset); the restarted allocator still goes up.
        let mut restarted = TsoAllocator::new(saved);
        let after = alloc(&mut restarted, &mut saved, 1, 9_000).compose();
        assert!(after > before);
    }

    #[test]
    fn compose_and_decode() {
        let ts = Timestamp { physical_ms: 1_700_000_000_123, logical: 42 };
        assert_eq!(Timestamp::decode(ts.compose()), ts);
    }
}
