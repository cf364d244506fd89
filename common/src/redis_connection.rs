//! One way to reach Redis: a multiplexed connection that reconnects by itself after
//! Redis restarts, with explicit connect and command timeouts, so a Redis that hangs
//! costs a bounded wait, never a stuck task.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret as _;

use crate::config::RedisSettings;

/// Connects to `settings.url` with `settings.command_timeout_ms` on every command.
pub async fn connect(settings: &RedisSettings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(settings.url.expose_secret()).context("parsing redis.url")?;
    let timeout = Duration::from_millis(settings.command_timeout_ms);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .context("connecting to Redis")
}
