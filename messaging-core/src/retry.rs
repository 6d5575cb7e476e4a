//! The retry rule of DESIGN §4: `max_retries = N` means up to N retries after the first
//! attempt; the wait before retry `n` (1-based) depends on the back-off.

use std::time::Duration;

/// How the wait grows from one retry to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backoff {
    /// Always `retry_delay`.
    #[default]
    Constant,
    /// `retry_delay × n`.
    Linear,
    /// `retry_delay × 2^(n-1)`, capped by `max_delay`, with jitter.
    Exponential,
}

impl Backoff {
    /// Parses `"constant"`, `"linear"` or `"exponential"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "constant" => Some(Self::Constant),
            "linear" => Some(Self::Linear),
            "exponential" => Some(Self::Exponential),
            _ => None,
        }
    }
}

/// A handler's retry policy. `const`-constructible so the macros can put it in a static
/// registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The base wait between attempts.
    pub retry_delay: Duration,
    /// How the wait grows.
    pub backoff: Backoff,
    /// Upper bound of any single wait.
    pub max_delay: Duration,
    /// Time allowed to one attempt; `None` for no limit.
    pub timeout: Option<Duration>,
}

impl RetryPolicy {
    /// The default: 3 retries, 1 s apart.
    pub const DEFAULT: Self = Self {
        max_retries: 3,
        retry_delay: Duration::from_secs(1),
        backoff: Backoff::Constant,
        max_delay: Duration::from_secs(60),
        timeout: None,
    };

    /// No retries at all.
    pub const NONE: Self = Self {
        max_retries: 0,
        ..Self::DEFAULT
    };

    /// `max_retries` retries, `retry_delay` apart, constant back-off.
    pub const fn new(max_retries: u32, retry_delay: Duration) -> Self {
        Self {
            max_retries,
            retry_delay,
            backoff: Backoff::Constant,
            max_delay: Duration::from_secs(60),
            timeout: None,
        }
    }

    /// Sets the back-off.
    pub const fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the cap of one wait.
    pub const fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Sets the time allowed to one attempt.
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Attempts in all: the first plus the retries.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The longest all retries can wait in back-off together, jitter at its largest
    /// (attempt times not included).
    pub fn total_backoff(&self) -> Duration {
        (1..=self.max_retries)
            .map(|n| match self.backoff {
                // Jitter only shortens an exponential wait: its cap is the bound.
                Backoff::Exponential => {
                    let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                    self.retry_delay.saturating_mul(factor).min(self.max_delay)
                }
                _ => self.delay_before_retry(n),
            })
            .fold(Duration::ZERO, Duration::saturating_add)
    }

    /// The longest a message can be held unacknowledged by its retries: every back-off,
    /// plus every attempt's time limit when there is one.
    pub fn max_hold(&self) -> Duration {
        let attempts = self
            .timeout
            .map_or(Duration::ZERO, |t| t.saturating_mul(self.max_attempts()));
        self.total_backoff().saturating_add(attempts)
    }

    /// The wait before retry `n` (1 for the first retry).
    pub fn delay_before_retry(&self, n: u32) -> Duration {
        let n = n.max(1);
        let delay = match self.backoff {
            Backoff::Constant => self.retry_delay,
            Backoff::Linear => self.retry_delay.saturating_mul(n),
            Backoff::Exponential => {
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                let capped = self.retry_delay.saturating_mul(factor).min(self.max_delay);
                // Jitter into [3/4, 1] of the wait so that instances retrying together spread.
                capped.mul_f64(0.75 + 0.25 * fastrand::f64())
            }
        };
        delay.min(self.max_delay.max(self.retry_delay))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_longest_hold_adds_every_back_off_and_time_limit() {
        assert_eq!(RetryPolicy::new(3, 5 * S).total_backoff(), 15 * S);
        let linear = RetryPolicy::new(3, S).with_backoff(Backoff::Linear);
        assert_eq!(linear.total_backoff(), 6 * S);
        let exponential = RetryPolicy::new(4, S)
            .with_backoff(Backoff::Exponential)
            .with_max_delay(4 * S);
        assert_eq!(exponential.total_backoff(), (1 + 2 + 4 + 4) * S);
        let mut timed = RetryPolicy::new(1, S);
        timed.timeout = Some(10 * S);
        assert_eq!(timed.max_hold(), 21 * S);
        assert_eq!(RetryPolicy::NONE.max_hold(), Duration::ZERO);
    }

    #[test]
    fn constant_and_linear_follow_design() {
        let p = RetryPolicy::new(5, S);
        assert_eq!(p.delay_before_retry(1), S);
        assert_eq!(p.delay_before_retry(4), S);
        let p = p.with_backoff(Backoff::Linear);
        assert_eq!(p.delay_before_retry(3), 3 * S);
        assert_eq!(p.max_attempts(), 6);
    }

    #[test]
    fn exponential_doubles_with_jitter_and_is_capped() {
        let p = RetryPolicy::new(10, S)
            .with_backoff(Backoff::Exponential)
            .with_max_delay(Duration::from_secs(10));
        for (n, full) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (5, 10.0),
            (30, 10.0),
        ] {
            let d = p.delay_before_retry(n).as_secs_f64();
            assert!(
                d <= full && d >= full * 0.75,
                "retry {n}: {d}s not in [{}, {full}]",
                full * 0.75
            );
        }
    }
}
