//! Per-transaction locks in Redis: `SET key token NX PX ttl` to take one, a Lua
//! compare-and-delete to release it, so a holder whose lock expired can never release
//! the next holder's. A lock only keeps two workers from doing the same work at once;
//! correctness comes from the version-checked update, so losing Redis costs latency,
//! never a wrong status.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use rand::RngCore;
use redis::aio::ConnectionManager;

use crate::config::RedisSettings;
use crate::retry;

const EXTEND: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
else
    return 0
end
"#;

const RELEASE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end
"#;

/// How long a worker waits for an unanswering Redis before it gives up on a lock.
pub const REDIS_PATIENCE: Duration = Duration::from_secs(60);

/// Takes and releases locks; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct Locks {
    /// Reconnects by itself after Redis restarts.
    connection: ConnectionManager,
    /// Prepended to every key: `<prefix>:lock:<resource>`.
    prefix: String,
    /// How long a lock lives if its holder dies without releasing it.
    ttl: Duration,
    release: redis::Script,
    extend: redis::Script,
}

/// A held lock. Give it back with [`Locks::release`]; if the holder dies it expires.
#[derive(Debug)]
#[must_use = "a lock is held until released or expired"]
pub struct Lock {
    key: String,
    token: String,
}

impl Locks {
    pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let connection = crate::redis_connection::connect(settings).await?;
        Ok(Locks {
            connection,
            prefix: settings.key_prefix.clone(),
            ttl: Duration::from_millis(settings.lock_ttl_ms),
            release: redis::Script::new(RELEASE),
            extend: redis::Script::new(EXTEND),
        })
    }

    /// The connection, for readiness to `PING`.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// The same connection with another time to live (tests use short ones).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Takes the lock on `resource` if nobody holds it.
    pub async fn try_acquire(&self, resource: &str) -> anyhow::Result<Option<Lock>> {
        let key = format!("{}:lock:{resource}", self.prefix);
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.connection.clone())
            .await
            .context("taking a Redis lock")?;
        Ok(set.map(|_| Lock { key, token }))
    }

    /// Takes the lock on `resource`, waiting up to `wait` for its holder to let go.
    ///
    /// When Redis does not answer, it waits for Redis (up to [`REDIS_PATIENCE`]) rather
    /// than let anyone work without a lock; past that the error goes to the caller,
    /// whose message is retried later.
    pub async fn acquire(&self, resource: &str, wait: Duration) -> anyhow::Result<Option<Lock>> {
        let mut deadline = tokio::time::Instant::now() + wait;
        let mut outage: Option<(tokio::time::Instant, backon::ExponentialBackoff)> = None;
        loop {
            match self.try_acquire(resource).await {
                Ok(Some(lock)) => return Ok(Some(lock)),
                Ok(None) => {
                    if let Some((since, _)) = outage.take() {
                        // The outage does not count against the wait for the holder.
                        deadline += since.elapsed();
                        tracing::info!(resource, "Redis answers again");
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => {
                    let (since, delays) = outage.get_or_insert_with(|| {
                        tracing::warn!(resource, error = %format!("{error:#}"), "Redis does not answer; waiting for it rather than working without a lock");
                        (
                            tokio::time::Instant::now(),
                            retry::in_process(Duration::from_millis(100), Duration::from_secs(2), None),
                        )
                    });
                    if since.elapsed() > REDIS_PATIENCE {
                        return Err(error);
                    }
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
                }
            }
        }
    }

    /// Releases `lock` if it is still ours; `false` when it had expired (and perhaps
    /// been taken by someone else, whose lock stays untouched).
    pub async fn release(&self, lock: Lock) -> anyhow::Result<bool> {
        let deleted: i64 = self
            .release
            .key(&lock.key)
            .arg(&lock.token)
            .invoke_async(&mut self.connection.clone())
            .await
            .context("releasing a Redis lock")?;
        Ok(deleted == 1)
    }
}

impl Locks {
    /// Gives `lock` another full TTL if it is still ours; `false` when it had expired.
    pub async fn extend(&self, lock: &Lock) -> anyhow::Result<bool> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let extended: i64 = self
            .extend
            .key(&lock.key)
            .arg(&lock.token)
            .arg(ttl_ms)
            .invoke_async(&mut self.connection.clone())
            .await
            .context("extending a Redis lock")?;
        Ok(extended == 1)
    }

    /// Runs `work` holding the lock on `resource`, then releases it. Waits for the lock
    /// up to its TTL, since a holder that died frees it by then; `None` when a live
    /// holder kept it all that time. While `work` runs (a gateway call can outlast the
    /// TTL) the lock is extended every third of its TTL. Should an extension fail, the
    /// lock may pass to another worker: the version fence on every write keeps that
    /// safe. A failed release is logged: the lock expires.
    pub async fn run_locked<T>(
        &self,
        resource: &str,
        work: impl Future<Output = T>,
    ) -> anyhow::Result<Option<T>> {
        let waiting = tokio::time::Instant::now();
        let acquired = self.acquire(resource, self.ttl).await?;
        crate::metrics::lock_wait(acquired.is_some(), waiting.elapsed());
        let Some(lock) = acquired else {
            return Ok(None);
        };
        let mut keepalive = tokio::time::interval(self.ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = keepalive.tick() => match self.extend(&lock).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(resource, "a lock expired while held; the version fence guards the writes"),
                    Err(error) => tracing::warn!(error = %format!("{error:#}"), resource, "could not extend a lock"),
                },
            }
        };
        if let Err(error) = self.release(lock).await {
            tracing::warn!(error = %format!("{error:#}"), resource, "could not release a lock; it will expire");
        }
        Ok(Some(result))
    }
}
