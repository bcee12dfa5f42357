//! The lease clock: the time leader-lease decisions are made on.
//!
//! A leader serves reads without a quorum round while its lease lasts
//! ([`super::peer::Peer::lease_valid`]). The lease is measured on this clock,
//! and on this clock only: raft ticks, ReadIndex expiry and everything else
//! in the node read real time. Normally the lease clock *is* real time
//! (`Instant::now()`, no lock, no arithmetic).
//!
//! # Skew, for the chaos harness only
//!
//! A node started with `--enable-test-controls` gets an adjustable clock
//! (`POST /debug/lease-clock`, see [`crate::status`]) so a Jepsen-style test
//! can show what clock trouble does to lease reads. Only two adjustments
//! exist, because only they are meaningful on one machine:
//!
//! - **A rate** (`0 < rate <= 10`): from the moment it is set, the lease clock
//!   advances `rate` seconds per real second. The clock is re-anchored at the
//!   change, so it stays continuous and never runs backwards. A *slow* clock
//!   on a leader stretches its lease in real time: a lease of `L` lasts
//!   `L / rate` real seconds. Followers measure the election timeout `E` on
//!   real time (raft ticks), so the lease stays safe while `L / rate < E`.
//!   With the defaults (`L` = 0.8 s; `E` = 10 ticks of 100 ms, ≈ 0.9 s at
//!   worst because the first tick after a heartbeat may come at once) rates
//!   above ≈ 0.89 are within the lease's safety margin (the harness uses
//!   ≥ 0.95); below that a partitioned leader may still serve lease reads
//!   after the majority elected a new leader and accepted writes, i.e.
//!   stale reads. A fast
//!   clock only shortens leases (more ReadIndex rounds, never a stale read).
//! - **A forward jump**: the clock leaps ahead (like a suspended VM that
//!   resumes, or NTP stepping the clock forward); every lease whose end it
//!   passes ends at once. Jumps backwards are refused: a monotonic clock
//!   never goes back, and the code relies on that (a backward step would
//!   resurrect expired leases, which no real monotonic clock can do).
//!
//! Skewing real time itself is not possible: every process on a kernel shares
//! one monotonic clock, so per-node skew has to be injected at the one place
//! that consumes the time, which is what this type is.
//!
//! The clock keeps a constant offset after `rate` returns to 1.0; that is
//! harmless, since a lease compares lease-clock instants with each other and
//! only the rate during a lease (and jumps) change its real length.

use std::ops::Add;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{Error, Result};

/// Fastest rate accepted: beyond this a test says nothing new.
pub const MAX_RATE: f64 = 10.0;

/// An instant on the lease clock. A distinct type so that real time (raft
/// ticks, read expiry) and lease time can never be mixed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseInstant(Instant);

impl Add<Duration> for LeaseInstant {
    type Output = LeaseInstant;

    fn add(self, d: Duration) -> LeaseInstant {
        LeaseInstant(self.0 + d)
    }
}

impl LeaseInstant {
    /// Signed distance from `real` to this lease instant, in milliseconds
    /// (positive: the lease clock is ahead of real time).
    fn offset_ms_from(self, real: Instant) -> i64 {
        if self.0 >= real {
            self.0.duration_since(real).as_millis() as i64
        } else {
            -(real.duration_since(self.0).as_millis() as i64)
        }
    }
}

/// The piecewise-linear map from real time to lease time.
#[derive(Debug)]
struct Skew {
    /// Real instant of the last change.
    anchor_real: Instant,
    /// Lease time at `anchor_real`.
    anchor_lease: Instant,
    /// Lease seconds per real second since `anchor_real`.
    rate: f64,
    /// Sum of all forward jumps.
    jumped: Duration,
}

impl Skew {
    fn at(&self, real: Instant) -> Instant {
        let elapsed = real.saturating_duration_since(self.anchor_real);
        // Exact at rate 1: no float rounding on the common path.
        let scaled = if self.rate == 1.0 { elapsed } else { elapsed.mul_f64(self.rate) };
        self.anchor_lease + scaled
    }

    /// Moves the anchor to `real` (never backwards), keeping the clock continuous.
    fn reanchor(&mut self, real: Instant) {
        let real = real.max(self.anchor_real);
        self.anchor_lease = self.at(real);
        self.anchor_real = real;
    }
}

/// What `GET /debug/lease-clock` shows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LeaseClockState {
    /// Lease seconds per real second (1.0: normal speed).
    pub rate: f64,
    /// Lease time minus real time now, in milliseconds (jumps and any time
    /// run fast or slow so far; negative after running slow).
    pub offset_ms: i64,
    /// Sum of all forward jumps, in milliseconds.
    pub jumped_ms: u64,
}

/// The clock lease decisions read (see the module doc). Cheap to clone;
/// clones share the skew.
#[derive(Clone, Debug, Default)]
pub struct LeaseClock {
    /// `None`: real time, not adjustable (every production node).
    skew: Option<Arc<Mutex<Skew>>>,
}

impl LeaseClock {
    /// Real time, not adjustable.
    pub fn real() -> LeaseClock {
        LeaseClock { skew: None }
    }

    /// A clock that starts at real time and the test controls may skew.
    pub fn adjustable() -> LeaseClock {
        let now = Instant::now();
        let skew = Skew { anchor_real: now, anchor_lease: now, rate: 1.0, jumped: Duration::ZERO };
        LeaseClock { skew: Some(Arc::new(Mutex::new(skew))) }
    }

    /// True if the test controls may skew this clock.
    pub fn is_adjustable(&self) -> bool {
        self.skew.is_some()
    }

    /// The lease time now.
    pub fn now(&self) -> LeaseInstant {
        self.at(Instant::now())
    }

    /// The lease time at real instant `real`.
    pub fn at(&self, real: Instant) -> LeaseInstant {
        match &self.skew {
            None => LeaseInstant(real),
            Some(s) => LeaseInstant(s.lock().at(real)),
        }
    }

    /// Sets the rate from now on. See [`LeaseClock::adjust_at`].
    pub fn set_rate(&self, rate: f64) -> Result<LeaseClockState> {
        self.adjust_at(Instant::now(), Some(rate), None)
    }

    /// Jumps the clock forward by `by`. See [`LeaseClock::adjust_at`].
    pub fn jump(&self, by: Duration) -> Result<LeaseClockState> {
        self.adjust_at(Instant::now(), None, Some(by))
    }

    /// At real instant `real`: sets the rate (if given; `0 < rate <= 10`) and
    /// then jumps forward by `jump` (if given). Checks everything before
    /// changing anything. `InvalidArgument` for a bad rate or a clock that is
    /// not adjustable.
    pub fn adjust_at(
        &self,
        real: Instant,
        rate: Option<f64>,
        jump: Option<Duration>,
    ) -> Result<LeaseClockState> {
        let Some(skew) = &self.skew else {
            return Err(Error::InvalidArgument(
                "the lease clock is real time here; start the node with --enable-test-controls".into(),
            ));
        };
        if let Some(r) = rate {
            // Stated as the valid range so that NaN is refused too.
            let valid = r > 0.0 && r <= MAX_RATE;
            if !valid {
                return Err(Error::InvalidArgument(format!(
                    "lease clock rate must be > 0 and <= {MAX_RATE}, got {r}"
                )));
            }
        }
        let mut s = skew.lock();
        s.reanchor(real);
        if let Some(r) = rate {
            s.rate = r;
        }
        if let Some(d) = jump {
            s.anchor_lease += d;
            s.jumped += d;
        }
        Ok(Self::state_of(&s, real))
    }

    /// The current rate and offset (rate 1, offset 0 for a real-time clock).
    pub fn state(&self) -> LeaseClockState {
        match &self.skew {
            None => LeaseClockState { rate: 1.0, offset_ms: 0, jumped_ms: 0 },
            Some(s) => Self::state_of(&s.lock(), Instant::now()),
        }
    }

    fn state_of(s: &Skew, real: Instant) -> LeaseClockState {
        let real = real.max(s.anchor_real);
        LeaseClockState {
            rate: s.rate,
            offset_ms: LeaseInstant(s.at(real)).offset_ms_from(real),
            jumped_ms: s.jumped.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_real_clock_is_real_time_and_cannot_be_skewed() {
        let c = LeaseClock::real();
        let t = Instant::now();
        assert_eq!(c.at(t), LeaseInstant(t));
        assert!(!c.is_adjustable());
        assert!(matches!(c.set_rate(0.5), Err(Error::InvalidArgument(_))));
        assert!(matches!(c.jump(ms(10)), Err(Error::InvalidArgument(_))));
        assert_eq!(c.state(), LeaseClockState { rate: 1.0, offset_ms: 0, jumped_ms: 0 });
    }

    #[test]
    fn an_untouched_adjustable_clock_is_real_time() {
        let c = LeaseClock::adjustable();
        let t = Instant::now() + ms(1234);
        assert_eq!(c.at(t), LeaseInstant(t));
    }

    #[test]
    fn a_rate_applies_from_its_change_on() {
        let c = LeaseClock::adjustable();
        let t0 = Instant::now();
        // Half speed from t0: 1 s of real time is 0.5 s of lease time.
        c.adjust_at(t0, Some(0.5), None).unwrap();
        let at_t0 = c.at(t0);
        assert_eq!(c.at(t0 + ms(1000)), at_t0 + ms(500));
        // Double speed from t0 + 1 s: continuous at the change, then 2× faster.
        let state = c.adjust_at(t0 + ms(1000), Some(2.0), None).unwrap();
        assert_eq!(state.rate, 2.0);
        assert_eq!(state.offset_ms, -500);
        assert_eq!(c.at(t0 + ms(1000)), at_t0 + ms(500));
        assert_eq!(c.at(t0 + ms(1500)), at_t0 + ms(1500));
        // Back to normal speed: the offset reached so far stays.
        let state = c.adjust_at(t0 + ms(2000), Some(1.0), None).unwrap();
        assert_eq!((state.rate, state.offset_ms), (1.0, 500));
        assert_eq!(c.at(t0 + ms(3000)), at_t0 + ms(3500));
    }

    #[test]
    fn jumps_go_forward_and_add_up() {
        let c = LeaseClock::adjustable();
        let t0 = Instant::now();
        let before = c.at(t0);
        let state = c.adjust_at(t0, None, Some(ms(700))).unwrap();
        assert_eq!((state.offset_ms, state.jumped_ms), (700, 700));
        assert_eq!(c.at(t0), before + ms(700));
        // Rate and jump in one call: the rate first, then the jump.
        let state = c.adjust_at(t0 + ms(100), Some(0.5), Some(ms(300))).unwrap();
        assert_eq!((state.rate, state.offset_ms, state.jumped_ms), (0.5, 1000, 1000));
        assert_eq!(c.at(t0 + ms(300)), before + ms(100 + 700 + 300 + 100));
    }

    #[test]
    fn the_clock_never_goes_backwards() {
        let c = LeaseClock::adjustable();
        let t0 = Instant::now();
        let mut last = c.at(t0);
        let changes = [(Some(3.0), None), (Some(0.1), Some(ms(5))), (Some(10.0), None), (Some(1.0), None)];
        for (i, (rate, jump)) in changes.into_iter().enumerate() {
            let t = t0 + ms(100 * i as u64);
            // Readings up to the change, the change, then readings after it.
            for step in 0..10 {
                let now = c.at(t + ms(step * 5));
                assert!(now >= last, "clock went back at change {i}, step {step}");
                last = now;
            }
            c.adjust_at(t + ms(50), rate, jump).unwrap();
            assert!(c.at(t + ms(50)) >= last);
        }
        // A reading for a real instant before the last change is clamped to it, not earlier.
        assert!(c.at(t0) >= last);
    }

    #[test]
    fn bad_rates_are_rejected_and_change_nothing() {
        let c = LeaseClock::adjustable();
        let t0 = Instant::now();
        for bad in [0.0, -1.0, 10.5, f64::NAN, f64::INFINITY] {
            let e = c.adjust_at(t0, Some(bad), Some(ms(100))).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
        assert_eq!(c.state().rate, 1.0);
        assert_eq!(c.at(t0), LeaseInstant(t0), "a rejected call must not jump either");
        assert!(c.adjust_at(t0, Some(MAX_RATE), None).is_ok());
    }
}
