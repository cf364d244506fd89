//! Merchant API keys as every request checks them: a key found in PostgreSQL is trusted
//! for `api.key_cache_ttl_ms` without another round trip. Revocation is honoured at once:
//! any change to `api_key` fires `NOTIFY paygate_api_keys` (see the migrations) and
//! every replica empties its cache. While a replica is not listening (its connection
//! broke), it trusts nothing it cached: every request asks PostgreSQL. A key's own
//! expiry (a rotated key's overlap) is checked on every hit. Unknown keys are never
//! cached, so guessing keys cannot fill memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paygate_common::domain::{DomainError, MerchantId};
use paygate_common::retry;

use crate::extract::hash_api_key;

/// The NOTIFY channel fired when API keys change.
pub const CHANNEL: &str = "paygate_api_keys";

/// More keys than this and the cache starts over (a bound, not a policy: a replica
/// serves far fewer merchants).
const MAX_ENTRIES: usize = 10_000;

/// Checked API keys, shared by the api's handlers.
#[derive(Clone)]
pub struct ApiKeyCache {
    entries: Arc<RwLock<HashMap<Vec<u8>, Entry>>>,
    ttl: Duration,
    /// True while the invalidation listener is connected; only then are entries used.
    listening: Arc<AtomicBool>,
    /// Bumped whenever the cache is emptied: a look-up that read PostgreSQL before a
    /// change arrived must not store what it read after.
    generation: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Entry {
    merchant: MerchantId,
    checked_at: Instant,
    expires_at: Option<DateTime<Utc>>,
}

impl ApiKeyCache {
    pub fn new(ttl: Duration) -> Self {
        ApiKeyCache {
            entries: Arc::default(),
            ttl,
            listening: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// The merchant `key` belongs to, if it is a live key.
    pub async fn merchant(&self, pool: &PgPool, key: &str) -> sqlx::Result<Option<MerchantId>> {
        let hash = hash_api_key(key);
        if let Some(merchant) = self.cached(&hash) {
            return Ok(Some(merchant));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let found: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT merchant_id, expires_at FROM api_key
              WHERE key_hash = $1 AND revoked_at IS NULL
                AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&hash)
        .fetch_optional(pool)
        .await?;
        let Some((merchant, expires_at)) = found else {
            return Ok(None);
        };
        let merchant: MerchantId = merchant
            .parse()
            .map_err(|e: DomainError| sqlx::Error::Decode(e.into()))?;
        if self.listening.load(Ordering::Acquire) {
            if let Ok(mut entries) = self.entries.write() {
                if self.generation.load(Ordering::Acquire) != generation {
                    return Ok(Some(merchant));
                }
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(
                    hash,
                    Entry {
                        merchant: merchant.clone(),
                        checked_at: Instant::now(),
                        expires_at,
                    },
                );
            }
        }
        Ok(Some(merchant))
    }

    /// Whether key changes reach this cache (only then does it serve from memory).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn cached(&self, hash: &[u8]) -> Option<MerchantId> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.read().ok()?;
        let entry = entries.get(hash)?;
        let fresh = entry.checked_at.elapsed() < self.ttl
            && entry.expires_at.is_none_or(|at| at > Utc::now());
        fresh.then(|| entry.merchant.clone())
    }

    fn forget_all(&self) {
        if let Ok(mut entries) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.clear();
        }
    }

    /// Listens for key changes until `shutdown`, emptying the cache on each; while the
    /// listener is down the cache is not used, and it is emptied again once listening
    /// resumes (a change may have come in between).
    pub async fn invalidate_on_change(self, pool: PgPool, shutdown: CancellationToken) {
        let delays = || retry::in_process(Duration::from_millis(200), Duration::from_secs(5), None);
        let mut failures = delays();
        while !shutdown.is_cancelled() {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                _ = shutdown.cancelled() => break,
                listener = listener => listener,
            };
            if let Ok(listener) = listener.as_mut() {
                self.forget_all();
                self.listening.store(true, Ordering::Release);
                failures = delays();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        notified = listener.recv() => match notified {
                            Ok(_) => self.forget_all(),
                            Err(error) => {
                                tracing::warn!(%error, "API key LISTEN connection failed");
                                break;
                            }
                        },
                    }
                }
            } else if let Err(error) = listener {
                tracing::warn!(%error, "cannot LISTEN for API key changes; checking every request");
            }
            self.listening.store(false, Ordering::Release);
            self.forget_all();
            let delay = failures.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.listening.store(false, Ordering::Release);
    }
}
