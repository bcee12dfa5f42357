//! Exponential backoff with full jitter under a total deadline.
//!
//! The n-th wait (n from 0) is drawn uniformly from `[0, min(cap, base * 2^n)]`
//! ("full jitter"): clients that failed together spread out instead of
//! retrying in lock step. Every wait is cut short at the deadline, and once
//! the deadline has passed [`Backoff::wait`] refuses, so a retry loop built on
//! it ends.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Default first ceiling: 2 ms.
pub const DEFAULT_BASE: Duration = Duration::from_millis(2);
/// Default largest ceiling: 500 ms.
pub const DEFAULT_CAP: Duration = Duration::from_millis(500);

/// Backoff state of one call. Not shared between calls.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    deadline: Instant,
}

/// Returned by [`Backoff::wait`] when the deadline has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

impl Backoff {
    /// Backoff with the defaults (base 2 ms, cap 500 ms) ending at `deadline`.
    pub fn new(deadline: Instant) -> Self {
        Self::with_params(DEFAULT_BASE, DEFAULT_CAP, deadline)
    }

    /// Backoff with the first ceiling `base`, largest ceiling `cap`, ending at
    /// `deadline`. A `cap` below `base` acts as `base`.
    pub fn with_params(base: Duration, cap: Duration, deadline: Instant) -> Self {
        Backoff { base, cap: cap.max(base), attempt: 0, deadline }
    }

    /// The instant after which no more attempts are made.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Number of waits so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next wait: `min(cap, base * 2^attempts)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait: a uniform draw from `[0, ceiling]`, raised to
    /// `at_least` (a server's hint, e.g. `ServerIsBusy.backoff_ms`), cut to
    /// the time left. Advances the attempt counter.
    pub fn next_delay(&mut self, at_least: Duration) -> Duration {
        let ceiling = self.ceiling();
        let jitter = Duration::from_micros(rand::thread_rng().gen_range(0..=ceiling.as_micros() as u64));
        self.attempt = self.attempt.saturating_add(1);
        jitter.max(at_least).min(self.remaining())
    }

    /// Sleeps for [`Backoff::next_delay`]. Fails without sleeping if the
    /// deadline has already passed.
    pub async fn wait(&mut self, at_least: Duration) -> Result<(), DeadlinePassed> {
        if self.remaining().is_zero() {
            return Err(DeadlinePassed);
        }
        let delay = self.next_delay(at_least);
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = Backoff::new(far());
        let mut seen = vec![];
        for _ in 0..12 {
            seen.push(b.ceiling().as_millis());
            b.next_delay(Duration::ZERO);
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 32, 64, 128, 256, 500, 500, 500, 500]);
    }

    #[test]
    fn ceiling_does_not_overflow() {
        let mut b = Backoff::new(far());
        for _ in 0..200 {
            b.next_delay(Duration::ZERO);
        }
        assert_eq!(b.ceiling(), DEFAULT_CAP);
    }

    #[test]
    fn delays_stay_within_jitter_bounds_and_hints() {
        let mut b = Backoff::new(far());
        for _ in 0..50 {
            let ceiling = b.ceiling();
            let d = b.next_delay(Duration::ZERO);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }
        // A server hint raises the wait above the jitter.
        assert!(b.next_delay(Duration::from_secs(2)) >= Duration::from_secs(2));
    }

    #[test]
    fn delays_never_pass_the_deadline() {
        let mut b = Backoff::new(Instant::now() + Duration::from_millis(10));
        assert!(b.next_delay(Duration::from_secs(5)) <= Duration::from_millis(10));
    }

    #[tokio::test]
    async fn wait_refuses_after_the_deadline() {
        let mut b = Backoff::new(Instant::now());
        assert_eq!(b.wait(Duration::ZERO).await, Err(DeadlinePassed));
    }
}
