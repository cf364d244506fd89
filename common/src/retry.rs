//! Exponential backoff with full jitter, the one retry delay every loop uses.

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `attempt` (1 for the first retry): a random duration
/// between half and all of `base * 2^(attempt-1)`, capped at `max`. Jitter keeps
/// replicas that failed together from retrying together.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << exponent).min(max);
    let ceiling_ms = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms))
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
    fn backoff_grows_and_stays_under_its_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for _ in 0..100 {
            let first = backoff(1, base, max);
            assert!(first >= Duration::from_millis(50) && first <= base);
            let fourth = backoff(4, base, max);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            assert!(backoff(30, base, max) <= max);
        }
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10), 0.2);
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
