//! Delivered webhooks, recorded together: the 2xx answers of one moment are marked
//! `delivered` with their attempts in one statement, where each used to be a statement
//! (and a commit) of its own — two per payment, the dispatcher's busiest.
//!
//! Only the plain case goes this way: a delivery that was not a probe, still claimed
//! with the attempt number it was sent with, whose endpoint is healthy (not failing,
//! not disabled). One that is not — another sender recorded it after a lease ran out,
//! or its endpoint's health changes with this answer — is left for the full record
//! (`Sender::record`), which fences on the same attempt number and sees to the
//! endpoint, so nothing is recorded twice and no health change is skipped.

use std::sync::Arc;

use sqlx::PgPool;

use paygate_common::batch::{Batch, Collector, AT_ONCE};
use paygate_common::group_commit::MAX_GROUP;

/// A delivered attempt, as it is recorded.
pub struct Delivered {
    pub delivery_id: String,
    /// The attempt number the delivery was claimed with (the fence).
    pub claimed: i32,
    pub status_code: i32,
    pub duration_ms: i32,
}

/// Records delivered attempts in groups. Cheap to share.
pub struct DeliveredRecords {
    collector: Collector<Records>,
}

impl DeliveredRecords {
    pub fn new(pool: PgPool) -> Self {
        DeliveredRecords {
            collector: Collector::new(Arc::new(Records { pool }), MAX_GROUP, AT_ONCE),
        }
    }

    /// Records `delivered` with the others of this moment: `true` once it is recorded,
    /// `false` when it is not the plain case (see the module) and the full record must
    /// decide.
    pub async fn record(&self, delivered: Delivered) -> sqlx::Result<bool> {
        self.collector.submit(delivered).await
    }
}

struct Records {
    pool: PgPool,
}

impl Batch for Records {
    type Item = Delivered;
    type Output = bool;
    type Error = sqlx::Error;

    async fn together(&self, items: &[Delivered]) -> sqlx::Result<Vec<bool>> {
        let ids: Vec<&str> = items.iter().map(|d| d.delivery_id.as_str()).collect();
        let recorded: Vec<String> = sqlx::query_scalar(
            "WITH sent AS (
                 SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::int[])
                          AS s(id, claimed, status_code, duration_ms)
             ), done AS (
                 UPDATE webhook_delivery d
                    SET status = 'delivered', attempt_count = s.claimed + 1, updated_at = now(),
                        next_attempt_at = NULL, leased_until = NULL
                   FROM sent s
                  WHERE d.id = s.id AND d.status = $5 AND d.attempt_count = s.claimed
                    AND NOT EXISTS (SELECT 1 FROM webhook_endpoint w
                                     WHERE w.id = d.endpoint_id
                                       AND (w.failing_since IS NOT NULL OR w.disabled_at IS NOT NULL))
              RETURNING d.id
             )
             INSERT INTO webhook_attempt (delivery_id, status_code, error, duration_ms, probe)
             SELECT s.id, s.status_code, NULL, s.duration_ms, false
               FROM sent s JOIN done USING (id)
          RETURNING delivery_id",
        )
        .bind(&ids)
        .bind(items.iter().map(|d| d.claimed).collect::<Vec<_>>())
        .bind(items.iter().map(|d| d.status_code).collect::<Vec<_>>())
        .bind(items.iter().map(|d| d.duration_ms).collect::<Vec<_>>())
        .bind(crate::sender::PENDING)
        // A join to the batch: planned for the deliveries as they are now.
        .persistent(false)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids
            .iter()
            .map(|id| recorded.iter().any(|r| r == id))
            .collect())
    }

    async fn alone(&self, item: &Delivered) -> sqlx::Result<bool> {
        let recorded = self.together(std::slice::from_ref(item)).await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    fn unanswered() -> sqlx::Error {
        sqlx::Error::WorkerCrashed
    }
}
