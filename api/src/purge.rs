//! What is no longer needed is not kept: every `api.purge.interval_ms` the api deletes
//! `Idempotency-Key` rows older than `api.idempotency.retention_ms` (a key is honoured
//! for that long, then forgotten with the answer it replays), and clears the sealed card
//! of every payment final (`completed` or `failed`) for longer than
//! `cards.clear_after_final_ms`: only its masked number stays. A final payment is never
//! sent to a gateway again, so its card is never opened again.
//!
//! Every replica runs it; the statements are idempotent and take a bounded batch each
//! (through an index), so replicas racing only share the work.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paygate_common::Settings;

/// Rows one statement deletes or clears at most, so no statement holds locks for long.
const BATCH: i64 = 1000;

/// How long each thing is kept, and how often the purge runs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub idempotency_keys: Duration,
    pub cards_after_final: Duration,
    pub interval: Duration,
}

impl Retention {
    pub fn of(settings: &Settings) -> Self {
        Retention {
            idempotency_keys: settings.api.idempotency.retention(),
            cards_after_final: Duration::from_millis(settings.cards.clear_after_final_ms),
            interval: Duration::from_millis(settings.api.purge.interval_ms),
        }
    }
}

/// What one purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub idempotency_keys: u64,
    pub cards: u64,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Purges once, everything that is due.
pub async fn once(pool: &PgPool, retention: &Retention) -> sqlx::Result<Purged> {
    Ok(Purged {
        idempotency_keys: in_batches(
            pool,
            "DELETE FROM idempotency_key WHERE (merchant_id, key) IN (
                 SELECT merchant_id, key FROM idempotency_key
                  WHERE created_at < now() - $1 * interval '1 millisecond'
                  LIMIT $2)",
            retention.idempotency_keys,
        )
        .await?,
        cards: in_batches(
            pool,
            "UPDATE transaction SET card_ciphertext = NULL, card_key_id = NULL
              WHERE id IN (
                  SELECT id FROM transaction
                   WHERE card_ciphertext IS NOT NULL AND status IN ('completed', 'failed')
                     AND updated_at < now() - $1 * interval '1 millisecond'
                   LIMIT $2)",
            retention.cards_after_final,
        )
        .await?,
    })
}

/// Runs `statement` (`$1`: the age in milliseconds, `$2`: the batch) until a batch
/// finds less than a full one; how many rows it changed.
async fn in_batches(pool: &PgPool, statement: &str, age: Duration) -> sqlx::Result<u64> {
    let mut changed = 0;
    loop {
        let batch = sqlx::query(statement)
            .bind(millis(age))
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        changed += batch;
        if batch < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            return Ok(changed);
        }
    }
}

/// Purges every `retention.interval` until `shutdown`. A failed run is logged and
/// tried again at the next interval: nothing is lost by waiting.
pub async fn run(
    pool: PgPool,
    retention: Retention,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match once(&pool, &retention).await {
            Ok(purged) if purged != Purged::default() => {
                tracing::info!(
                    idempotency_keys = purged.idempotency_keys,
                    cards = purged.cards,
                    "purged what is no longer needed"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "purge failed; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(retention.interval) => {}
        }
    }
}
