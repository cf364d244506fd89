//! The outbox relay: publishes committed, unpublished `transaction_event` rows to Kafka
//! and marks them published. Rows are claimed with `FOR UPDATE SKIP LOCKED`, so any
//! number of relays (one in each service that writes events) share the work without
//! publishing a row twice in the normal case; a crash between the broker's
//! acknowledgement and the commit publishes a batch again, which consumers tolerate.
//! A broker outage only delays events: the batch is rolled back and retried.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{OutboxSettings, Topics};
use crate::events::Destination;
use crate::kafka::{self, await_delivery, Envelope, Producer};
use crate::retry;
use crate::Settings;

/// The NOTIFY channel fired when events are inserted (see the migrations).
pub const CHANNEL: &str = "paygate_outbox";

pub struct Relay {
    pool: PgPool,
    producer: Producer,
    topics: Topics,
    /// Rows claimed and published per round trip.
    batch_size: i64,
    /// How long to sleep when no notification arrives.
    poll_interval: Duration,
}

#[derive(sqlx::FromRow)]
struct Pending {
    seq: i64,
    id: String,
    transaction_id: String,
    event_type: String,
    destination: String,
    payload: Vec<u8>,
}

impl Relay {
    /// Creates the suite's topics that are missing (the broker may not create them on
    /// first use) and a relay with a producer of its own: what every service that
    /// writes events starts with.
    pub async fn for_service(pool: PgPool, settings: &Settings) -> anyhow::Result<Self> {
        let topics = kafka::all_topics(&settings.kafka.topics);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka::ensure_topics(&settings.kafka, &topics).await?;
        let producer = Producer::new(&settings.kafka)?;
        Ok(Self::new(
            pool,
            producer,
            settings.kafka.topics.clone(),
            &settings.outbox,
        ))
    }

    pub fn new(
        pool: PgPool,
        producer: Producer,
        topics: Topics,
        settings: &OutboxSettings,
    ) -> Self {
        Relay {
            pool,
            producer,
            topics,
            batch_size: settings.batch_size,
            poll_interval: Duration::from_millis(settings.poll_interval_ms),
        }
    }

    /// Publishes until `shutdown`, waking on NOTIFY and at every poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = self.listen().await;
        let delays =
            || retry::in_process(Duration::from_millis(200), Duration::from_secs(10), None);
        let mut failures = delays();
        while !shutdown.is_cancelled() {
            match self.drain().await {
                Ok(()) => failures = delays(),
                Err(error) => {
                    let delay = failures.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %format!("{error:#}"), ?delay, "outbox relay failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.poll_interval) => {}
                notified = wait_for_notification(&mut listener) => {
                    if !notified {
                        listener = self.listen().await;
                    }
                }
            }
        }
        self.producer.flush(Duration::from_secs(5)).await;
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox events; polling only");
                return None;
            }
        };
        match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox events; polling only");
                None
            }
        }
    }

    /// Publishes batches until none is left.
    pub async fn drain(&self) -> anyhow::Result<()> {
        while self.publish_batch().await? == usize::try_from(self.batch_size).unwrap_or(usize::MAX)
        {
        }
        Ok(())
    }

    /// Claims up to one batch, publishes it, marks it published; returns how many.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        let batch: Vec<Pending> = sqlx::query_as(
            "SELECT seq, id, transaction_id, event_type, destination, payload
               FROM transaction_event
              WHERE published_at IS NULL
              ORDER BY seq
              LIMIT $1
                FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if batch.is_empty() {
            return Ok(0);
        }

        let mut deliveries = Vec::with_capacity(batch.len());
        for event in &batch {
            let destination = Destination::parse(&event.destination).ok_or_else(|| {
                anyhow::anyhow!(
                    "event {} has unknown destination {}",
                    event.id,
                    event.destination
                )
            })?;
            // History-only events are stored published; one that is not has nothing to go to.
            let Some(topic) = destination.topic(&self.topics) else {
                continue;
            };
            let delivery = self.producer.enqueue(&Envelope {
                topic,
                key: &event.transaction_id,
                event_id: &event.id,
                event_type: &event.event_type,
                payload: &event.payload,
            })?;
            deliveries.push((delivery, topic));
        }
        for (delivery, topic) in deliveries {
            await_delivery(delivery, topic).await?;
        }

        let published: Vec<i64> = batch.iter().map(|e| e.seq).collect();
        sqlx::query("UPDATE transaction_event SET published_at = now() WHERE seq = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        crate::metrics::outbox_published(published.len(), started.elapsed());
        tracing::debug!(count = published.len(), "published outbox events");
        Ok(published.len())
    }
}

/// Waits for one notification; `false` when the listener is gone or broke (it is then
/// re-created), and never returns when there is no listener (the poll takes over).
async fn wait_for_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => match l.recv().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "outbox LISTEN connection failed");
                false
            }
        },
        None => std::future::pending().await,
    }
}
