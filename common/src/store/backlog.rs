//! Samples how many events wait in the outbox into the `paygate_outbox_backlog` gauge.
//! A backlog that grows means the relays cannot publish (a broker outage) or cannot
//! keep up; it reads the relay's partial index, so it costs one index count a sample.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the backlog is counted.
pub const EVERY: Duration = Duration::from_secs(5);

/// Counts the unpublished events every [`EVERY`] until `shutdown`.
pub async fn sample(pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let counted: Result<i64, sqlx::Error> =
            sqlx::query_scalar(
                "SELECT count(*) FROM transaction_event WHERE published_at IS NULL AND set_aside_at IS NULL",
            )
                .fetch_one(&pool)
                .await;
        match counted {
            Ok(events) => crate::metrics::outbox_backlog(events),
            Err(error) => tracing::debug!(%error, "could not count the outbox backlog"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
