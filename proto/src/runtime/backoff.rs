//! Retry delays: exponential, capped, with jitter so that many clients cut off together
//! do not come back in lockstep. Every retry loop in weir (forwarding, recipient
//! delivery, dead-letter writes) takes its delays from here.

use std::time::Duration;

/// The delays of one retry loop: `first`, then doubling up to `max`, each plus a random
/// jitter of up to half of it.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `first` doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The delay before the next attempt (without jitter), for logs.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The delay to wait now (jitter included); the one after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base + Duration::from_millis(fastrand::u64(0..=base.as_millis() as u64 / 2))
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_at_most_half_again_as_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let bases = [100u64, 200, 350, 350];
        for base in bases {
            assert_eq!(b.peek(), Duration::from_millis(base));
            let d = b.next_delay().as_millis() as u64;
            assert!((base..=base + base / 2).contains(&d), "{d} for {base}");
        }
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
    }
}
