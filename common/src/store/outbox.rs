//! The outbox relay: publishes committed, unpublished `transaction_event` rows to Kafka
//! and marks them published. Every service that writes events runs one; any number of
//! them share one database.
//!
//! How the guarantees are kept:
//! - **No transaction is held open across the broker.** A relay *claims* a batch with a
//!   lease (`claimed_until`, one short statement), publishes it, then *marks* what the
//!   broker acknowledged (another). A relay that dies after publishing leaves its claim
//!   to run out; another relay then publishes those rows again: at least once, and every
//!   consumer absorbs a duplicate (version fences, unique event ids).
//! - **Per-transaction order, across relays.** A row is claimed only when every earlier
//!   unpublished row of its transaction is claimed in the same batch; within a batch a
//!   transaction's rows are produced one after the other, each after the broker
//!   acknowledged the one before. So a row never goes out while an earlier event of its
//!   transaction is unpublished, whichever relay holds it.
//! - **A row the broker can never take does not block the rest.** A permanent refusal
//!   (too large, an invalid topic, a destination nobody maps, a topic still unknown after
//!   `outbox.unknown_topic_attempts`) sets the row aside (`set_aside_at`,
//!   `set_aside_reason`), counted and logged; the rows after it go out. Set aside is
//!   final for that row: the later events of its transaction are published too (each
//!   carries the whole snapshot), so its final state still reaches the merchant.
//! - A broker outage only delays events: a transient failure releases the claim and the
//!   batch is tried again with backoff.
//! - A delivery that timed out renews the relay's producer before it tries again (see
//!   `common/src/store/kafka/producer.rs`: tansu cannot take the epoch bump that follows).
//!
//! How a relay learns of new rows, cheaply:
//! - **In-process, never NOTIFY.** A commit that sends NOTIFY holds a database-wide lock
//!   until its commit record is flushed, which serializes every event-writing commit of
//!   every service (no group commit). So the code that commits events calls [`commit`]
//!   (or [`committed`] after a commit of its own), which wakes the relays of this process;
//!   the poll (`outbox.poll_interval_ms`) finds what other processes left behind (one that
//!   died holding a claim, a row written by a process without a relay).
//! - **One statement per batch.** Marking a batch published and claiming the next is one
//!   statement ([`Relay::claim_after`]); a batch that frees rows of its transactions which
//!   waited behind it takes them in that same statement. A quiet relay costs a claim per
//!   poll and nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaSettings, OutboxSettings, Topics};
use crate::events::Destination;
use crate::kafka::{self, await_delivery, Envelope, Producer};
use crate::retry;
use crate::Settings;

/// A relay runs one statement at a time.
const RELAY_CONNECTIONS: u32 = 2;

/// Wakes the relays of this process; see [`committed`].
static COMMITTED: Notify = Notify::const_new();

/// Tells this process's relays that events were just committed, so they claim now rather
/// than at their next poll. Call it after the commit, never before: a relay woken early
/// finds nothing and sleeps until the poll.
pub fn committed() {
    COMMITTED.notify_waiters();
}

/// Commits `tx` and wakes this process's relays for the events it wrote.
pub async fn commit(tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
    tx.commit().await?;
    committed();
    Ok(())
}

pub struct Relay {
    pool: PgPool,
    producer: Producer,
    topics: Topics,
    /// Rows claimed and published per round trip.
    batch_size: i64,
    /// How long to sleep when no notification arrives.
    poll_interval: Duration,
    /// How long a claim lasts (see [`OutboxSettings::lease_ms`]).
    lease: Duration,
    /// How long to wait after a notification before claiming (see
    /// [`OutboxSettings::linger_ms`]).
    linger: Duration,
    /// Attempts a row gets while its topic is unknown to the broker.
    unknown_topic_attempts: i32,
    /// Names this relay's claims (`claimed_by`), unique per process.
    id: String,
    /// Rows this relay set aside since it started.
    set_aside: Arc<AtomicU64>,
    /// Where this relay's next claim starts its scan: the lowest row its last claim
    /// considered. Below it lie mostly rows already published, whose dead index entries
    /// a scan from the start would wade through under load (seconds per claim once the
    /// backlog is large and vacuum lags). Zero scans everything: after a claim that found
    /// nothing and at every poll, so what waits below (a dead relay's expired claim) is
    /// never left behind.
    low: AtomicI64,
}

/// A claimed row, as it is published.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub seq: i64,
    pub id: String,
    pub transaction_id: String,
    pub event_type: String,
    pub destination: String,
    pub payload: Vec<u8>,
    pub publish_attempts: i32,
    /// The lowest row the claim considered (where the relay's next scan starts).
    pub low: Option<i64>,
}

/// What became of each row of a published batch.
#[derive(Debug, Default)]
pub struct Published {
    /// Acknowledged by the broker (or with nothing to go to): to be marked published.
    pub acknowledged: Vec<i64>,
    /// Refused for good: to be set aside with the reason.
    pub refused: Vec<(i64, String)>,
    /// Not acknowledged for a reason that may pass (broker down, a topic not yet
    /// known): released for a later attempt, with the error.
    pub failed: Vec<(i64, String)>,
    /// Of `failed`, the rows whose topic the broker does not know (their attempts count).
    pub unknown_topic: Vec<i64>,
    /// Whether a delivery timed out inside the producer (which then renews).
    pub timed_out: bool,
}

/// A row handed to the producer.
enum Pending<'a> {
    Delivery(kafka::Delivery, &'a str),
    Settled(Outcome),
}

/// How one produce ended.
enum Outcome {
    Acknowledged,
    Refused(String),
    Failed {
        error: String,
        unknown_topic: bool,
        timed_out: bool,
    },
}

impl Relay {
    /// Creates the suite's topics that are missing (the broker may not create them on
    /// first use) and a relay with a producer of its own: what every service that
    /// writes events starts with.
    /// Its claims and marks commit without waiting for the WAL flush
    /// ([`crate::db::connect_unflushed`]): lost in a PostgreSQL crash, they only mean
    /// publishing those events again.
    pub async fn for_service(settings: &Settings) -> anyhow::Result<Self> {
        let topics = kafka::all_topics(&settings.kafka.topics);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka::ensure_topics(&settings.kafka, &topics).await?;
        let pool = crate::db::connect_unflushed(&settings.database, RELAY_CONNECTIONS).await?;
        Self::new(pool, &settings.kafka, &settings.outbox)
    }

    /// A relay with a producer of its own, publishing to `kafka.topics`.
    pub fn new(
        pool: PgPool,
        kafka: &KafkaSettings,
        settings: &OutboxSettings,
    ) -> anyhow::Result<Self> {
        Ok(Relay {
            pool,
            producer: Producer::new(kafka)?,
            topics: kafka.topics.clone(),
            batch_size: settings.batch_size,
            poll_interval: Duration::from_millis(settings.poll_interval_ms),
            lease: settings.lease(),
            linger: Duration::from_millis(settings.linger_ms),
            unknown_topic_attempts: settings.unknown_topic_attempts,
            id: format!("relay_{}", uuid::Uuid::new_v4().simple()),
            set_aside: Arc::default(),
            low: AtomicI64::new(0),
        })
    }

    /// How many rows this relay has set aside since it started (every set-aside row is
    /// also in the table, with its reason: `set_aside_at IS NOT NULL`).
    pub fn set_aside_count(&self) -> u64 {
        self.set_aside.load(Ordering::Relaxed)
    }

    /// Publishes until `shutdown`, waking when this process commits events
    /// ([`committed`]) and at every poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let delays =
            || retry::in_process(Duration::from_millis(200), Duration::from_secs(10), None);
        let mut failures = delays();
        while !shutdown.is_cancelled() {
            // Registered before the drain, so a commit made while it runs wakes the next
            // round instead of being missed.
            let woken = COMMITTED.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
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
                _ = tokio::time::sleep(self.poll_interval) => {
                    self.low.store(0, Ordering::Relaxed);
                }
                () = &mut woken => {
                    // Let the commits that come right after this one gather, so under
                    // load one claim takes many of them.
                    tokio::time::sleep(self.linger).await;
                }
            }
        }
        self.producer.flush(Duration::from_secs(5)).await;
    }

    /// Publishes batches until a claim finds nothing (a batch can free rows of its
    /// transactions that waited behind it, so a short batch is no sign of an empty
    /// outbox). Each round is one statement: it marks what the broker acknowledged of the
    /// last batch and claims the next. A batch in which something failed for a reason
    /// that may pass ends the drain with that error, so the caller backs off.
    pub async fn drain(&self) -> anyhow::Result<()> {
        let mut batch = self.claim().await?;
        while !batch.is_empty() {
            let started = std::time::Instant::now();
            let published = self.publish(&batch).await;
            self.record_unacknowledged(&published).await?;
            if published.timed_out {
                self.producer.renew().await;
            }
            if let Some((_, error)) = published.failed.first() {
                self.mark(&published.acknowledged).await?;
                crate::metrics::outbox_published(published.acknowledged.len(), started.elapsed());
                anyhow::bail!("the broker did not take an outbox event: {error}");
            }
            batch = self.claim_after(&published.acknowledged).await?;
            crate::metrics::outbox_published(published.acknowledged.len(), started.elapsed());
        }
        Ok(())
    }

    /// Claims, for this relay's lease, the oldest unpublished rows that are free (never
    /// claimed, or their claim ran out) and whose transaction has no earlier unpublished
    /// row outside this batch. One statement, committed at once.
    pub async fn claim(&self) -> sqlx::Result<Vec<Claimed>> {
        self.claim_after(&[]).await
    }

    /// Marks `acknowledged` (rows of this relay's last batch) published and claims the
    /// next batch, in one statement: the claim counts the rows it marks as published, so
    /// a transaction's next row, which waited behind them, is claimable at once. Rows
    /// waiting behind another relay's claim are left out of the scan, so they cannot
    /// crowd a batch out. The earlier-row look-ups say `COALESCE(published_at,
    /// set_aside_at) IS NULL` so they can only use
    /// `transaction_event_unpublished_by_transaction` (see migration `20261128000005`):
    /// a probe per candidate, never a scan of the backlog. The mark says only
    /// `seq = ANY($4)`, so the primary key serves it; the statement is planned for its
    /// parameters each time (see below).
    pub async fn claim_after(&self, acknowledged: &[i64]) -> sqlx::Result<Vec<Claimed>> {
        sqlx::query_as(
            "WITH marked AS (
                 UPDATE transaction_event SET published_at = now(), claimed_until = NULL
                  WHERE seq = ANY($4)
             ), candidate AS (
                 SELECT seq, transaction_id FROM transaction_event t
                  WHERE published_at IS NULL AND set_aside_at IS NULL AND seq <> ALL($4)
                    AND seq >= $5
                    AND (claimed_until IS NULL OR claimed_until < now())
                    AND NOT EXISTS (
                        SELECT 1 FROM transaction_event held
                         WHERE held.transaction_id = t.transaction_id AND held.seq < t.seq
                           AND COALESCE(held.published_at, held.set_aside_at) IS NULL
                           AND held.claimed_until >= now() AND held.seq <> ALL($4))
                  ORDER BY seq
                  LIMIT $1
                    FOR UPDATE SKIP LOCKED
             ), ready AS (
                 SELECT c.seq FROM candidate c
                  WHERE NOT EXISTS (
                      SELECT 1 FROM transaction_event earlier
                       WHERE earlier.transaction_id = c.transaction_id
                         AND earlier.seq < c.seq
                         AND COALESCE(earlier.published_at, earlier.set_aside_at) IS NULL
                         AND earlier.seq <> ALL($4)
                         AND earlier.seq NOT IN (SELECT seq FROM candidate))
             )
             UPDATE transaction_event e
                SET claimed_until = now() + make_interval(secs => $2), claimed_by = $3
               FROM ready
              WHERE e.seq = ready.seq
          RETURNING e.seq, e.id, e.transaction_id, e.event_type, e.destination, e.payload,
                    e.publish_attempts, (SELECT min(seq) FROM candidate) AS low",
        )
        .bind(self.batch_size)
        .bind(self.lease.as_secs_f64())
        .bind(&self.id)
        .bind(acknowledged)
        .bind(self.low.load(Ordering::Relaxed))
        // Planned for its parameters every time: a plan cached while the table was
        // nearly empty marks the batch with a sequential scan of the whole outbox,
        // which under load took most of a core (seen with auto_explain).
        .persistent(false)
        .fetch_all(&self.pool)
        .await
        .map(|mut rows: Vec<Claimed>| {
            rows.sort_by_key(|r| r.seq);
            let low = rows.iter().filter_map(|r| r.low).min().unwrap_or(0);
            self.low.store(low, Ordering::Relaxed);
            rows
        })
    }

    /// Produces a claimed batch: the transactions side by side, each transaction's rows
    /// one after the other. It goes in rounds: each round enqueues the next row of every
    /// transaction whose previous row the broker acknowledged (or refused for good), then
    /// waits for all of them; a transient failure stops its transaction's rows for this
    /// batch. Most batches are one round. Touches no database.
    pub async fn publish(&self, batch: &[Claimed]) -> Published {
        let mut chains: Vec<Vec<&Claimed>> = Vec::new();
        let mut chain_of: HashMap<&str, usize> = HashMap::new();
        for row in batch {
            let index = *chain_of
                .entry(row.transaction_id.as_str())
                .or_insert_with(|| {
                    chains.push(Vec::new());
                    chains.len() - 1
                });
            chains[index].push(row);
        }
        let mut published = Published::default();
        let mut stopped: Vec<Option<String>> = vec![None; chains.len()];
        let rounds = chains.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            let mut in_flight = Vec::new();
            for (index, chain) in chains.iter().enumerate() {
                let Some(row) = chain.get(round) else {
                    continue;
                };
                match &stopped[index] {
                    Some(error) => published.failed.push((
                        row.seq,
                        format!("an earlier event of its transaction failed: {error}"),
                    )),
                    None => in_flight.push((index, row, self.enqueue(row))),
                }
            }
            for (index, row, pending) in in_flight {
                let outcome = match pending {
                    Pending::Settled(outcome) => outcome,
                    Pending::Delivery(delivery, topic) => {
                        match await_delivery(delivery, topic).await {
                            Ok(()) => Outcome::Acknowledged,
                            Err(error) => classify(&error),
                        }
                    }
                };
                match outcome {
                    Outcome::Acknowledged => published.acknowledged.push(row.seq),
                    Outcome::Refused(reason) => published.refused.push((row.seq, reason)),
                    Outcome::Failed {
                        error,
                        unknown_topic,
                        timed_out,
                    } => {
                        published.timed_out |= timed_out;
                        let attempts = row.publish_attempts + 1;
                        if unknown_topic && attempts >= self.unknown_topic_attempts {
                            published.refused.push((
                                row.seq,
                                format!("the broker does not know its topic after {attempts} attempts: {error}"),
                            ));
                            continue;
                        }
                        if unknown_topic {
                            published.unknown_topic.push(row.seq);
                        }
                        stopped[index] = Some(error.clone());
                        published.failed.push((row.seq, error));
                    }
                }
            }
        }
        published
    }

    /// Hands one row to the producer: its delivery to wait for, or what is already known.
    fn enqueue<'a>(&'a self, row: &Claimed) -> Pending<'a> {
        let Some(destination) = Destination::parse(&row.destination) else {
            return Pending::Settled(Outcome::Refused(format!(
                "unknown destination {:?}",
                row.destination
            )));
        };
        // History-only events are stored published; one that is not has nothing to go to.
        let Some(topic) = destination.topic(&self.topics) else {
            return Pending::Settled(Outcome::Acknowledged);
        };
        let envelope = Envelope {
            topic,
            key: &row.transaction_id,
            event_id: &row.id,
            event_type: &row.event_type,
            payload: &row.payload,
        };
        match self.producer.enqueue(&envelope) {
            Ok(delivery) => Pending::Delivery(delivery, topic),
            Err(error) => Pending::Settled(classify(&error)),
        }
    }

    /// Marks rows the broker acknowledged published.
    async fn mark(&self, acknowledged: &[i64]) -> sqlx::Result<()> {
        if acknowledged.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE transaction_event SET published_at = now(), claimed_until = NULL
              WHERE seq = ANY($1)",
        )
        .bind(acknowledged)
        .persistent(false)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets refused rows aside with their reason and releases the claims of the rows
    /// that failed for a reason that may pass.
    async fn record_unacknowledged(&self, published: &Published) -> sqlx::Result<()> {
        for (seq, reason) in &published.refused {
            sqlx::query(
                "UPDATE transaction_event
                    SET set_aside_at = now(), set_aside_reason = $2, claimed_until = NULL,
                        publish_attempts = publish_attempts + 1
                  WHERE seq = $1 AND published_at IS NULL",
            )
            .bind(seq)
            .bind(reason)
            .execute(&self.pool)
            .await?;
            self.set_aside.fetch_add(1, Ordering::Relaxed);
            crate::metrics::outbox_set_aside();
            tracing::error!(
                seq,
                %reason,
                outbox_set_aside = 1,
                "the broker refused an outbox event for good; set aside"
            );
        }
        if !published.failed.is_empty() {
            let (seqs, errors): (Vec<i64>, Vec<String>) = published.failed.iter().cloned().unzip();
            sqlx::query(
                "UPDATE transaction_event e
                    SET claimed_until = NULL, last_error = f.error,
                        publish_attempts = publish_attempts + CASE WHEN e.seq = ANY($4) THEN 1 ELSE 0 END
                   FROM unnest($1::bigint[], $2::text[]) AS f(seq, error)
                  WHERE e.seq = f.seq AND e.claimed_by = $3 AND e.published_at IS NULL",
            )
            .bind(&seqs)
            .bind(&errors)
            .bind(&self.id)
            .bind(&published.unknown_topic)
            // A join to the batch: planned for the outbox as it is (a broker outage is
            // when it is large), never a plan kept from an empty table.
            .persistent(false)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}

/// Sorts a produce error: refused for good, or failed for a reason that may pass.
fn classify(error: &anyhow::Error) -> Outcome {
    let text = format!("{error:#}");
    let code = match error.downcast_ref::<KafkaError>() {
        Some(KafkaError::MessageProduction(code)) => Some(*code),
        Some(other) => other.rdkafka_error_code(),
        None => None,
    };
    match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => Outcome::Refused(text),
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
            Outcome::Failed {
                error: text,
                unknown_topic: true,
                timed_out: false,
            }
        }
        _ => Outcome::Failed {
            error: text,
            unknown_topic: false,
            timed_out: kafka::is_timeout(error),
        },
    }
}
