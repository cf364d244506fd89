//! Retry delays, two kinds:
//! - in-process retries (a database, broker or Redis error inside a loop) use `backon`,
//!   a maintained retry library (Paygate's requirements name `backoff`, which is
//!   unmaintained: RUSTSEC-2025-0012), through [`in_process`];
//! - durable schedules, whose state lives in Kafka or PostgreSQL rather than in a loop
//!   (the payment retry topic), take one delay at a time from [`full_jitter`]; webhook
//!   retries follow a configured list moved by [`jitter`].

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

/// Delays for in-process retries: exponential from `base` (doubling), capped at `max`,
/// with jitter, `times` of them (`None`: without end).
pub fn in_process(base: Duration, max: Duration, times: Option<usize>) -> ExponentialBackoff {
    let builder = ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_jitter();
    match times {
        Some(times) => builder.with_max_times(times),
        None => builder.without_max_times(),
    }
    .build()
}

/// The delay before retry number `attempt` (1 for the first) of a durable schedule:
/// exponential backoff with full jitter, a random duration between zero and
/// `base * 2^(attempt-1)` capped at `cap`. Full jitter spreads replicas that failed
/// together the most.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << exponent).min(cap);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
}

/// `delay` moved by a random amount of up to `fraction` either way (0.2 is +-20 %).
pub fn jitter(delay: Duration, fraction: f64) -> Duration {
    let factor = 1.0 + rand::rng().random_range(-fraction..=fraction);
    delay.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_between_zero_and_its_growing_capped_ceiling() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut fourth = Vec::new();
        for _ in 0..200 {
            assert!(full_jitter(1, base, cap) <= base);
            let d = full_jitter(4, base, cap);
            assert!(d <= Duration::from_millis(800));
            fourth.push(d);
            assert!(full_jitter(30, base, cap) <= cap);
        }
        assert!(
            fourth.iter().any(|d| *d < Duration::from_millis(400)),
            "full jitter reaches below half the ceiling"
        );
    }

    #[test]
    fn in_process_delays_grow_stay_capped_and_end_after_their_count() {
        let delays: Vec<Duration> =
            in_process(Duration::from_millis(100), Duration::from_secs(1), Some(6)).collect();
        assert_eq!(delays.len(), 6);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[0] < Duration::from_millis(250));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10), 0.2);
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
