//! One rate limit for repeated log lines: a failing server, a hostile client or a noisy
//! library must not flood the log, yet the first occurrence is always shown and the
//! next line says how many were held back. Lock-free; shareable between tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one line through per period, counting what it held back.
pub struct LogLimit {
    start: Instant,
    period_ms: u64,
    /// Milliseconds since `start` of the last line let through; `u64::MAX` before any.
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl LogLimit {
    /// A limit of one line per `period`.
    pub fn new(period: Duration) -> LogLimit {
        LogLimit {
            start: Instant::now(),
            period_ms: period.as_millis() as u64,
            last_ms: AtomicU64::new(u64::MAX),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == u64::MAX || now.saturating_sub(last) >= self.period_ms)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The period, in whole seconds, for "repeats are suppressed for N s" texts.
    pub fn period_secs(&self) -> u64 {
        self.period_ms / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_passes_then_one_per_period_with_the_count_held_back() {
        let l = LogLimit::new(Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
        assert_eq!(l.allow(), None);
    }
}
