//! A limiter for log lines that can repeat many times a second.
//!
//! One [`RateLimit`] per call site, owned by one thread (a shard's accept loop, the control
//! thread's admin listener): `Cell`s, no locks, no atomics. The first occurrence is logged at
//! once; further ones within the interval are counted, and the next line after the interval
//! says how many were suppressed. Repeats that stop arriving are not reported on their own:
//! the count travels with the next line.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant};

/// RateLimit lets one log line through per `interval` and counts the ones it holds back.
#[derive(Debug)]
pub struct RateLimit {
    /// The shortest time between two lines that get through.
    interval: Duration,
    /// When the last line got through; `None` before the first.
    last: Cell<Option<Instant>>,
    /// Lines held back since the last one that got through.
    suppressed: Cell<u64>,
}

impl RateLimit {
    /// A limiter letting one line through per `interval`.
    pub const fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// A limiter letting one line through per second, the usual choice.
    pub const fn per_second() -> RateLimit {
        RateLimit::new(Duration::from_secs(1))
    }

    /// Whether a line occurring `now` should be logged: `Some` with how many were suppressed
    /// since the last logged one (append it to the line), or `None` to drop it (it is
    /// counted).
    pub fn check(&self, now: Instant) -> Option<Suppressed> {
        if let Some(last) = self.last.get() {
            if now.saturating_duration_since(last) < self.interval {
                self.suppressed.set(self.suppressed.get() + 1);
                return None;
            }
        }
        self.last.set(Some(now));
        Some(Suppressed(self.suppressed.replace(0)))
    }
}

/// Suppressed is how many repeats of a line a [`RateLimit`] held back before letting it
/// through. It displays as nothing when zero, else as ` (N repeats suppressed since the last
/// one)`, to be appended to the log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 repeat suppressed since the last one)"),
            n => write!(f, " ({n} repeats suppressed since the last one)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let limit = RateLimit::new(1000 * MS);
        let t0 = Instant::now();
        assert_eq!(limit.check(t0), Some(Suppressed(0)));
        // 99 more within the first second: all held back.
        for i in 1..100 {
            assert_eq!(limit.check(t0 + i * 10 * MS), None, "occurrence {i}");
        }
        // The first one a second after the last logged line gets through with the count.
        assert_eq!(limit.check(t0 + 1000 * MS), Some(Suppressed(99)));
        assert_eq!(limit.check(t0 + 1500 * MS), None);
        assert_eq!(limit.check(t0 + 1999 * MS), None);
        assert_eq!(limit.check(t0 + 2000 * MS), Some(Suppressed(2)));
        // After a quiet spell the next line gets through at once, with nothing pending.
        assert_eq!(limit.check(t0 + 60_000 * MS), Some(Suppressed(0)));
    }

    #[test]
    fn an_earlier_instant_than_the_last_line_is_held_back() {
        let limit = RateLimit::per_second();
        let t0 = Instant::now() + 10_000 * MS;
        assert!(limit.check(t0).is_some());
        assert_eq!(limit.check(t0 - 5 * MS), None);
        assert_eq!(limit.check(t0 + 1000 * MS), Some(Suppressed(1)));
    }

    #[test]
    fn suppressed_count_reads_as_a_suffix() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(
            Suppressed(1).to_string(),
            " (1 repeat suppressed since the last one)"
        );
        assert_eq!(
            format!("accept failed: EMFILE{}", Suppressed(361)),
            "accept failed: EMFILE (361 repeats suppressed since the last one)"
        );
    }
}
