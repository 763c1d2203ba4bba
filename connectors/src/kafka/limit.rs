//! Rate limits of a source (messages/s and payload bytes/s), with governor's GCRA
//! limiters. The consumer thread waits before taking a message the limits do not allow
//! yet; meanwhile librdkafka's prefetch queue fills up to its bound and fetching stops, so
//! nothing piles up in memory.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Limits of one source; `None` fields do not limit.
pub struct Limits {
    messages: Option<DefaultDirectRateLimiter>,
    bytes: Option<(DefaultDirectRateLimiter, u32)>,
    clock: DefaultClock,
}

/// A quota of `per_second`, with bursts of a tenth of a second (at least `min_burst`), so
/// the rate holds over short windows too.
fn quota(per_second: NonZeroU32, min_burst: u32) -> Quota {
    let burst = (per_second.get() / 10).max(min_burst).max(1);
    Quota::per_second(per_second).allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl Limits {
    /// `max_message_bytes` is the largest message: bursts of bytes allow at least one.
    pub fn new(
        messages_per_second: Option<u32>,
        bytes_per_second: Option<u32>,
        max_message_bytes: usize,
    ) -> Self {
        let max_message = u32::try_from(max_message_bytes).unwrap_or(u32::MAX);
        Self {
            messages: messages_per_second
                .and_then(NonZeroU32::new)
                .map(|r| RateLimiter::direct(quota(r, 1))),
            bytes: bytes_per_second.and_then(NonZeroU32::new).map(|r| {
                let q = quota(r, max_message);
                (RateLimiter::direct(q), q.burst_size().get())
            }),
            clock: DefaultClock::default(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// Wait until one message of `bytes` bytes is allowed (or `stop` is set); returns the
    /// time waited.
    pub fn wait(&self, bytes: usize, stop: &AtomicBool) -> Duration {
        let mut waited = Duration::ZERO;
        let mut sleep = |d: Duration| {
            let d = d.min(Duration::from_millis(100));
            std::thread::sleep(d);
            waited += d;
        };
        if let Some(l) = &self.messages {
            while let Err(not_until) = l.check() {
                if stop.load(Ordering::Relaxed) {
                    return waited;
                }
                sleep(not_until.wait_time_from(self.clock.now()));
            }
        }
        if let Some((l, burst)) = &self.bytes {
            let n = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, *burst);
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            while let Ok(Err(not_until)) = l.check_n(n) {
                if stop.load(Ordering::Relaxed) {
                    return waited;
                }
                sleep(not_until.wait_time_from(self.clock.now()));
            }
        }
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_message_rate_holds_after_the_first_burst() {
        let limits = Limits::new(Some(2_000), None, 1024);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        for _ in 0..1_200 {
            limits.wait(10, &stop);
        }
        // 200 in the burst, then 1,000 at 2,000/s: at least half a second, however fast
        // the machine (only a lower bound is asserted: a slow machine is slower still).
        assert!(
            started.elapsed() >= Duration::from_millis(480),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn no_limits_never_wait() {
        let limits = Limits::new(None, None, 1024);
        assert!(!limits.is_active());
        assert_eq!(limits.wait(10, &AtomicBool::new(false)), Duration::ZERO);
    }
}
