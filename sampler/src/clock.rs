//! The one clock the sampler's decisions read, injected at construction.
//!
//! Deadlines of buffered traces run on a monotonic millisecond scale; hold windows,
//! correlation windows and rollup intervals on unix nanoseconds (they meet span timestamps
//! and survive restarts). [`Engine`](crate::engine::Engine) and
//! [`Settler`](crate::settle::Settler) read both from the same [`Clock`], so a test that
//! drives a [`ManualClock`] makes buffering, holding, correlation and rollups deterministic
//! together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the sampler reads the time.
pub trait Clock: Send + Sync {
    /// Milliseconds on a monotonic scale (only differences mean anything).
    fn monotonic_ms(&self) -> u64;
    /// Wall-clock time, unix nanoseconds.
    fn unix_nanos(&self) -> u64;
}

/// The real clocks: `Instant` for deadlines, `SystemTime` for wall time.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A clock whose monotonic scale starts now.
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_nanos(&self) -> u64 {
        otel_tail_shared::otlp::unix_now()
    }
}

/// A clock that moves only when its owner advances it (tests, benchmarks). Wall time is
/// its unix start plus the monotonic milliseconds, so both scales move together.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
    unix_start: u64,
}

impl ManualClock {
    /// A clock at monotonic 0 and wall time `unix_start` (unix nanoseconds).
    pub fn starting_at(unix_start: u64) -> ManualClock {
        ManualClock {
            ms: AtomicU64::new(0),
            unix_start,
        }
    }

    /// A clock at monotonic 0 and the current wall time.
    pub fn now() -> ManualClock {
        ManualClock::starting_at(otel_tail_shared::otlp::unix_now())
    }

    /// Moves both scales forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }

    fn unix_nanos(&self) -> u64 {
        self.unix_start
            .saturating_add(self.ms.load(Ordering::SeqCst).saturating_mul(1_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_scales_together() {
        let clock = ManualClock::starting_at(5_000_000_000);
        assert_eq!(
            (clock.monotonic_ms(), clock.unix_nanos()),
            (0, 5_000_000_000)
        );
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.monotonic_ms(), 1500);
        assert_eq!(clock.unix_nanos(), 6_500_000_000);
    }

    #[test]
    fn system_clock_is_monotonic_and_near_wall_time() {
        let clock = SystemClock::new();
        let a = clock.monotonic_ms();
        let b = clock.monotonic_ms();
        assert!(b >= a);
        let wall = otel_tail_shared::otlp::unix_now();
        assert!(clock.unix_nanos().abs_diff(wall) < 60_000_000_000);
    }
}
