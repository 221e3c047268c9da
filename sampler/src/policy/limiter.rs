//! Budgets of the stateful policies, driven by time passed in by the caller.

/// Nanoseconds in a second.
const NANOS_PER_SEC: f64 = 1e9;

/// A token bucket that starts full and refills continuously, like Go's `rate.Limiter` that the
/// Collector's `rate_limiting` and `bytes_limiting` policies use.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds; a request for more never passes.
    burst: f64,
    /// Tokens available at `last_unix_nano`.
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` before the first request.
    last_unix_nano: Option<u64>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last_unix_nano: None,
        }
    }

    /// Takes `n` tokens at time `now_unix_nano` if that many are available. Time going
    /// backwards refills nothing.
    pub(crate) fn try_take(&mut self, n: f64, now_unix_nano: u64) -> bool {
        if let Some(last) = self.last_unix_nano {
            if now_unix_nano > last {
                let elapsed = (now_unix_nano - last) as f64 / NANOS_PER_SEC;
                self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
                self.last_unix_nano = Some(now_unix_nano);
            }
        } else {
            self.last_unix_nano = Some(now_unix_nano);
        }
        if n <= self.tokens {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Counters of spans sampled during the current whole second (the `composite` policy's budget,
/// reset at each new second as in the Collector).
#[derive(Debug, Clone)]
pub(crate) struct SecondWindow {
    /// The unix second the counters belong to; `u64::MAX` before the first use.
    second: u64,
}

impl SecondWindow {
    /// A window that resets on first use.
    pub(crate) fn new() -> Self {
        SecondWindow { second: u64::MAX }
    }

    /// Moves to the second containing `now_unix_nano`; returns true when that is a new second,
    /// so the caller resets its counters.
    pub(crate) fn advance(&mut self, now_unix_nano: u64) -> bool {
        let second = now_unix_nano / 1_000_000_000;
        if second != self.second {
            self.second = second;
            true
        } else {
            false
        }
    }
}
