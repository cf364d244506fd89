//! One way to reach Redis: a multiplexed connection that reconnects by itself after
//! Redis restarts, with explicit connect and command timeouts, so a Redis that hangs
//! costs a bounded wait, never a stuck task. A `rediss://` URL is TLS (rustls, the
//! server's name verified) trusting `redis.tls.ca_file` when set (else the system's
//! roots), with a client certificate when one is configured.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret as _;

use crate::config::RedisSettings;

/// Connects to `settings.url` with `settings.command_timeout_ms` on every command.
pub async fn connect(settings: &RedisSettings) -> anyhow::Result<ConnectionManager> {
    let client = client(settings)?;
    let timeout = Duration::from_millis(settings.command_timeout_ms);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .context("connecting to Redis")
}

/// The client `settings` describe, TLS included.
pub fn client(settings: &RedisSettings) -> anyhow::Result<redis::Client> {
    let url = settings.url.expose_secret();
    let tls = &settings.tls;
    if tls.ca_file.is_empty() && tls.client_cert_file.is_empty() {
        return redis::Client::open(url).context("parsing redis.url");
    }
    let read = |name: &str, path: &str| {
        std::fs::read(path).with_context(|| format!("reading redis.tls.{name} from {path}"))
    };
    let root_cert = match tls.ca_file.as_str() {
        "" => None,
        path => Some(read("ca_file", path)?),
    };
    let client_tls = match tls.client_cert_file.as_str() {
        "" => None,
        path => Some(redis::ClientTlsConfig {
            client_cert: read("client_cert_file", path)?,
            client_key: read("client_key_file", &tls.client_key_file)?,
        }),
    };
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .context("redis.url with redis.tls")
}
