//! Merchant API keys as every request checks them: a key found in PostgreSQL is trusted
//! for `api.key_cache_ttl_ms` without another round trip. Revocation is honoured at once:
//! any change to `api_key` fires `NOTIFY paygate_api_keys` (see the migrations) and
//! every replica empties its cache. While a replica is not listening (its connection
//! broke), it trusts nothing it cached: every request asks PostgreSQL. A key's own
//! expiry (a rotated key's overlap) is checked on every hit.
//!
//! A key PostgreSQL did not know is remembered as unknown for
//! `api.unknown_key_cache_ttl_ms` (while listening: a new key notifies too, so it is
//! never refused for having been tried before it existed), so repeating a wrong key
//! costs no query. A key never confirmed before is looked up only within the client
//! address's budget (see [`crate::http::client_limit`]), so a flood of made-up keys costs
//! PostgreSQL a bounded number of queries, not one each; keys once confirmed are
//! always looked up, so a merchant is not locked out by a flood from its own address.
//! Every live key counts as confirmed from the moment the replica listens (it reads
//! their hashes then, and again on every change), so a merchant's first burst after a
//! restart or a new key never spends the budget either (behind a load balancer every
//! merchant shares one address). Both memories are bounded.

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

use crate::http::error::ApiError;
use crate::http::extract::hash_api_key;

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
    /// Keys PostgreSQL did not know, and when it said so.
    unknown: Arc<RwLock<HashMap<Vec<u8>, Instant>>>,
    unknown_ttl: Duration,
    /// Keys PostgreSQL once confirmed: they may be looked up whatever the budget.
    confirmed: Arc<RwLock<std::collections::HashSet<Vec<u8>>>>,
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
    /// Trusts a found key for `ttl` and refuses an unknown one for `unknown_ttl`.
    pub fn new(ttl: Duration, unknown_ttl: Duration) -> Self {
        ApiKeyCache {
            entries: Arc::default(),
            ttl,
            unknown: Arc::default(),
            unknown_ttl,
            confirmed: Arc::default(),
            listening: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// The merchant `key` belongs to, if it is a live key. A key neither cached nor
    /// ever confirmed is looked up only if `admit` lets it (the client's budget).
    pub async fn merchant(
        &self,
        pool: &PgPool,
        key: &str,
        admit: impl FnOnce() -> Result<(), ApiError>,
    ) -> Result<Option<MerchantId>, ApiError> {
        let hash = hash_api_key(key);
        if let Some(merchant) = self.cached(&hash) {
            return Ok(Some(merchant));
        }
        if self.known_unknown(&hash) {
            return Ok(None);
        }
        let confirmed = self
            .confirmed
            .read()
            .is_ok_and(|confirmed| confirmed.contains(&hash));
        if !confirmed {
            admit()?;
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
            self.remember_unknown(hash, generation);
            return Ok(None);
        };
        let merchant: MerchantId = merchant
            .parse()
            .map_err(|e: DomainError| sqlx::Error::Decode(e.into()))?;
        if let Ok(mut confirmed) = self.confirmed.write() {
            if confirmed.len() >= MAX_ENTRIES {
                confirmed.clear();
            }
            confirmed.insert(hash.clone());
        }
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

    /// Whether `hash` was recently found unknown (trusted only while listening, like
    /// every entry: a key created meanwhile would otherwise be refused).
    fn known_unknown(&self, hash: &[u8]) -> bool {
        self.listening.load(Ordering::Acquire)
            && self.unknown.read().is_ok_and(|unknown| {
                unknown
                    .get(hash)
                    .is_some_and(|at| at.elapsed() < self.unknown_ttl)
            })
    }

    fn remember_unknown(&self, hash: Vec<u8>, generation: u64) {
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut unknown) = self.unknown.write() {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            if unknown.len() >= MAX_ENTRIES {
                unknown.retain(|_, at| at.elapsed() < self.unknown_ttl);
                if unknown.len() >= MAX_ENTRIES {
                    unknown.clear();
                }
            }
            unknown.insert(hash, Instant::now());
        }
    }

    /// Counts every live key as confirmed, so none of them spends a client's budget.
    async fn confirm_live_keys(&self, pool: &PgPool) {
        let live: sqlx::Result<Vec<Vec<u8>>> = sqlx::query_scalar(
            "SELECT key_hash FROM api_key
              WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
              LIMIT $1",
        )
        .bind(i64::try_from(MAX_ENTRIES).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await;
        match live {
            Ok(live) => {
                if let Ok(mut confirmed) = self.confirmed.write() {
                    if confirmed.len() + live.len() > MAX_ENTRIES {
                        confirmed.clear();
                    }
                    confirmed.extend(live);
                }
            }
            Err(error) => tracing::warn!(%error, "could not read the live API keys"),
        }
    }

    fn forget_all(&self) {
        if let (Ok(mut entries), Ok(mut unknown)) = (self.entries.write(), self.unknown.write()) {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.clear();
            unknown.clear();
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
                self.confirm_live_keys(&pool).await;
                self.listening.store(true, Ordering::Release);
                failures = delays();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        notified = listener.recv() => match notified {
                            Ok(_) => {
                                self.forget_all();
                                self.confirm_live_keys(&pool).await;
                            }
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
