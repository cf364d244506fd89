//! Per-endpoint rate limits held across every dispatcher: a generic cell rate algorithm
//! (GCRA) in Redis. Each endpoint has one key, `<prefix>:webhook-rate:<endpoint>`,
//! holding the earliest time (Redis's own clock, so dispatchers' clocks never matter) at
//! which its next request may start. A send reserves the slot at that time and sleeps
//! until it, so requests to one endpoint start at least `1 / limit` seconds apart
//! whichever dispatcher sends them: never faster than the limit, never a burst after an
//! outage. A slot further away than the caller will wait is not taken: the delivery goes
//! back to wait (never dropped). Redis being down costs latency only: the delivery
//! waits and is tried again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use paygate_common::config::RedisSettings;

/// Reserves the slot (microseconds on Redis's clock) and answers how long to wait for
/// it, or, when that is longer than `ARGV[2]`, minus the wait and reserves nothing.
const RESERVE: &str = r#"
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local at = tonumber(redis.call("GET", KEYS[1]) or "0")
if at < now then at = now end
local wait = at - now
if wait > tonumber(ARGV[2]) then return -wait end
local next = at + interval
redis.call("SET", KEYS[1], string.format("%.0f", next), "PX", math.floor((next - now) / 1000) + 1000)
return wait
"#;

/// What the limiter allows a send.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Sleep this long, then send.
    After(Duration),
    /// No slot within the wait allowed: try again after this long.
    Busy(Duration),
}

/// Reserves request slots per endpoint; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct RateLimiter {
    settings: RedisSettings,
    /// Made at the first reservation, not at start: a dispatcher whose endpoints have no
    /// rate limit never needs Redis, and one started while Redis is down still sends.
    connection: Arc<OnceCell<ConnectionManager>>,
    /// Prepended to every key: `<prefix>:webhook-rate:<endpoint>`.
    prefix: String,
    reserve: redis::Script,
}

impl RateLimiter {
    pub fn new(settings: &RedisSettings) -> Self {
        RateLimiter {
            settings: settings.clone(),
            connection: Arc::default(),
            prefix: settings.key_prefix.clone(),
            reserve: redis::Script::new(RESERVE),
        }
    }

    async fn connection(&self) -> anyhow::Result<ConnectionManager> {
        self.connection
            .get_or_try_init(|| paygate_common::redis_connection::connect(&self.settings))
            .await
            .cloned()
    }

    /// A slot for one request to `endpoint`, which takes `per_second` requests a second,
    /// at most `patience` from now.
    pub async fn reserve(
        &self,
        endpoint: &str,
        per_second: u32,
        patience: Duration,
    ) -> anyhow::Result<Slot> {
        let interval = 1_000_000 / u64::from(per_second.max(1));
        let patience = u64::try_from(patience.as_micros()).unwrap_or(u64::MAX);
        let answer: i64 = self
            .reserve
            .key(format!("{}:webhook-rate:{endpoint}", self.prefix))
            .arg(interval)
            .arg(patience)
            .invoke_async(&mut self.connection().await?)
            .await
            .context("reserving a webhook rate-limit slot in Redis")?;
        let wait = Duration::from_micros(answer.unsigned_abs());
        Ok(if answer < 0 {
            Slot::Busy(wait)
        } else {
            Slot::After(wait)
        })
    }
}
