//! A request limit per merchant, shared by every api replica through Redis: a counter
//! per merchant per window (`INCR` + `PEXPIRE`). Over the limit is `429` with
//! `Retry-After`. Redis holds no payment state: when it does not answer the request is
//! let through (logged), so an outage of Redis costs protection, never a payment.

use std::time::Duration;

use redis::aio::ConnectionManager;

use paygate_common::config::{RateLimitSettings, RedisSettings};
use paygate_common::domain::MerchantId;

use crate::http::error::ApiError;

#[derive(Clone)]
pub struct RateLimiter {
    connection: ConnectionManager,
    prefix: String,
    requests: u64,
    window: Duration,
}

impl RateLimiter {
    pub async fn connect(redis: &RedisSettings, limit: &RateLimitSettings) -> anyhow::Result<Self> {
        let connection = paygate_common::redis_connection::connect(redis).await?;
        Ok(RateLimiter {
            connection,
            prefix: redis.key_prefix.clone(),
            requests: limit.requests,
            window: Duration::from_millis(limit.window_ms.max(1)),
        })
    }

    /// Counts one request of `merchant`; `RateLimited` when over the limit.
    pub async fn check(&self, merchant: &MerchantId) -> Result<(), ApiError> {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let slot = now_ms / window_ms;
        let key = format!("{}:rate:{merchant}:{slot}", self.prefix);
        let counted: redis::RedisResult<(u64, i64)> = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(window_ms.saturating_mul(2))
            .query_async(&mut self.connection.clone())
            .await;
        match counted {
            Ok((count, _)) if count > self.requests => {
                let left_ms = (slot + 1) * window_ms - now_ms;
                Err(ApiError::RateLimited(left_ms.div_ceil(1000).max(1)))
            }
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, "rate limit not checked: Redis did not answer");
                Ok(())
            }
        }
    }
}
