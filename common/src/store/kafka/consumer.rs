//! The at-least-once consumer loop. Many messages are in flight at once, but one at a
//! time per key (a transaction id), so one payment's messages are handled in order and
//! one slow payment never holds up another. A partition's offset is stored only up to
//! its lowest unfinished message (the ordering guarantee of Confluent's parallel
//! consumer), so a crash redelivers everything not finished, and nothing after a gap is
//! skipped.
//!
//! The handler decides what a failure means. A [`HandlerError::Permanent`] message can
//! never succeed (it does not decode, it names nothing we know): it goes to the topic's
//! dead-letter topic with the reason and is then committed. A
//! [`HandlerError::Transient`] one (database down) is retried in place with backoff;
//! when the attempts run out the loop stops reading, lets the messages in flight
//! finish, and returns the error without committing that message, so the service stops,
//! its supervisor restarts it, and the message is consumed again.
//!
//! A message may carry a [`headers::NOT_BEFORE`] header (unix milliseconds): the loop
//! holds it, without holding its partition or any other key, until then. That is how
//! the payment-processor's retry topic waits for a retry's due time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{base_config, headers, Producer};
use crate::config::{KafkaSettings, PartitionAssignment};
use crate::metrics::{self, MessageOutcome};
use crate::retry;
use crate::trace::{TraceContext, TRACEPARENT};

/// A consumed message, owned, so handlers can keep it across awaits.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Inbound {
    fn from_borrowed(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Inbound {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        }
    }

    /// When the message is due ([`headers::NOT_BEFORE`]), in unix milliseconds.
    pub fn not_before(&self) -> Option<i64> {
        self.header(headers::NOT_BEFORE)?.parse().ok()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
}

/// How a handler failed; see the module documentation.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
}

impl HandlerError {
    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        HandlerError::Permanent(error.into())
    }

    pub fn transient(error: impl Into<anyhow::Error>) -> Self {
        HandlerError::Transient(error.into())
    }
}

/// Something that does the work of one message. It must be idempotent: a message can be
/// delivered again after a crash between the side effect and the commit.
pub trait Handler: Send + Sync {
    fn handle(&self, message: &Inbound) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How many partitions a consumer reads now: what readiness asks of a consumer.
/// Cheap to clone; updated on every rebalance (or once, when every partition is
/// assigned by hand).
#[derive(Debug, Clone, Default)]
pub struct Assignment(Arc<AtomicUsize>);

impl Assignment {
    pub fn partitions(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, partitions: usize) {
        self.0.store(partitions, Ordering::Relaxed);
        metrics::consumer_assigned(partitions);
    }
}

/// Logs rebalances and commit failures, which are otherwise silent; tracks the
/// assignment; turns librdkafka's statistics into the consumer-lag gauge.
#[derive(Default)]
struct LoggingContext {
    commits: FailureStreak,
    assignment: Assignment,
}

impl ClientContext for LoggingContext {
    /// Every `statistics.interval.ms`: each owned partition's lag behind its high
    /// watermark, measured from the committed offset.
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (&partition, stats) in &topic.partitions {
                if partition >= 0 && stats.desired && stats.consumer_lag >= 0 {
                    metrics::consumer_lag(name, partition, stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoggingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "partitions about to be rebalanced");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "partitions rebalanced");
        match rebalance {
            Rebalance::Assign(partitions) => self.assignment.set(partitions.count()),
            Rebalance::Revoke(_) => self.assignment.set(0),
            Rebalance::Error(_) => {}
        }
    }

    /// A failed commit loses nothing: the stored offsets stay in the consumer and the
    /// next auto-commit (every second) sends them again. A slow broker fails every
    /// commit for a while, so the failure is logged when it starts and when it ends,
    /// not once a second.
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                if let Some(failed) = self.commits.succeeded() {
                    tracing::info!(
                        failed,
                        "offset commits succeed again; the kept offsets are committed"
                    );
                }
            }
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                if self.commits.failed() {
                    tracing::warn!(%error, "offset commit failed; the stored offsets are kept and committed again every second (logged again once it recovers)");
                }
            }
        }
    }
}

/// Counts a run of failures so that it is reported once when it starts and once when
/// it ends.
#[derive(Debug, Default)]
struct FailureStreak(AtomicU64);

impl FailureStreak {
    /// Records a failure; `true` for the first of a run.
    fn failed(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// Records a success; the length of the run it ended, if it ended one.
    fn succeeded(&self) -> Option<u64> {
        Some(self.0.swap(0, Ordering::Relaxed)).filter(|&failed| failed > 0)
    }
}

/// A consumer group member subscribed to some topics.
pub struct ConsumerLoop {
    consumer: StreamConsumer<LoggingContext>,
    worker: MessageWorker,
    /// Messages read but not finished (running, waiting for their key, or held until
    /// due), at most.
    max_in_flight: usize,
}

impl ConsumerLoop {
    /// Joins `group_id` and subscribes to `topics`. Offsets are stored by the loop only
    /// after the handler succeeded, and committed every second and on exit.
    pub fn subscribe(
        settings: &KafkaSettings,
        group_id: &str,
        topics: &[&str],
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer<LoggingContext> = base_config(settings)
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
            .set(
                "statistics.interval.ms",
                settings.statistics_interval_ms.to_string(),
            )
            .create_with_context(LoggingContext::default())
            .context("creating the Kafka consumer")?;
        match settings.partition_assignment {
            PartitionAssignment::Group => consumer
                .subscribe(topics)
                .with_context(|| format!("subscribing to {topics:?}"))?,
            PartitionAssignment::All => {
                let mut partitions = TopicPartitionList::new();
                for topic in topics {
                    let metadata = consumer
                        .fetch_metadata(Some(topic), Duration::from_secs(10))
                        .with_context(|| format!("reading the partitions of {topic}"))?;
                    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                        partitions.add_partition_offset(topic, partition.id(), Offset::Stored)?;
                    }
                }
                anyhow::ensure!(partitions.count() > 0, "{topics:?} have no partitions");
                consumer
                    .assign(&partitions)
                    .with_context(|| format!("assigning the partitions of {topics:?}"))?;
                consumer.context().assignment.set(partitions.count());
            }
        }
        Ok(ConsumerLoop {
            consumer,
            worker: MessageWorker {
                attempts: settings.handler_attempts,
                dead_letters: Producer::new(settings)?,
            },
            max_in_flight: settings.max_in_flight.max(1),
        })
    }

    /// A producer sharing nothing with the consumer's reads (its dead-letter one): what
    /// readiness asks for broker metadata.
    pub fn producer(&self) -> Producer {
        self.worker.dead_letters.clone()
    }

    /// The partitions this consumer reads, as readiness reports them.
    pub fn assignment(&self) -> Assignment {
        self.consumer.context().assignment.clone()
    }

    /// Consumes until `shutdown` is cancelled (then lets the messages in flight finish,
    /// commits what was done and returns `Ok`) or a transient failure outlasts its
    /// retries (then returns the error, leaving that message uncommitted).
    pub async fn run<H: Handler + 'static>(
        self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let result = self.consume(handler, &shutdown).await;
        self.close().await;
        result
    }

    async fn consume<H: Handler + 'static>(
        &self,
        handler: Arc<H>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut state = InFlight::default();
        let mut running: JoinSet<(Inbound, anyhow::Result<Processed>)> = JoinSet::new();
        let spawn = |running: &mut JoinSet<_>, message: Inbound| {
            let worker = self.worker.clone();
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            // Every Paygate message is keyed by its transaction: the key is the
            // transaction id every line of its handling carries.
            let key = message.key.as_deref().unwrap_or_default();
            let parent = message
                .header(TRACEPARENT)
                .and_then(TraceContext::parse)
                .or_else(|| TraceContext::for_transaction(key));
            let trace = parent.map(|context| context.child());
            let span = tracing::info_span!(
                "message",
                topic = %message.topic,
                partition = message.partition,
                offset = message.offset,
                transaction_id = key,
                trace_id = trace.map(|c| c.trace_id()).as_deref(),
            );
            if let Some(parent) = &parent {
                crate::trace::attach(&span, parent);
            }
            let work = async move {
                let result = worker.process(&*handler, &message, &shutdown).await;
                (message, result)
            };
            match trace {
                Some(context) => running.spawn(context.scope(work).instrument(span)),
                None => running.spawn(work.instrument(span)),
            };
        };
        let mut failure = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    let (message, result) = match joined {
                        Ok(done) => done,
                        Err(error) => {
                            failure = Some(anyhow::Error::new(error).context("a message handler panicked"));
                            break;
                        }
                    };
                    match result {
                        Ok(Processed::Done) => self.finished(&mut state, &message),
                        // Shutting down mid-wait: left uncommitted for the next owner.
                        Ok(Processed::Abandoned) => {}
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                    if let Some(next) = state.next_of_key(&message) {
                        spawn(&mut running, next);
                    }
                }
                received = self.consumer.recv(), if state.count < self.max_in_flight
                    && state.held.len() < self.max_in_flight * HELD_PER_SLOT => {
                    let message = match received {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "Kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let inbound = Inbound::from_borrowed(&message);
                    drop(message);
                    if let Some(ready) = state.admit(inbound) {
                        spawn(&mut running, ready);
                    }
                }
            }
        }
        // Let what is running finish (a cancelled wait ends at once), so its work is
        // not done twice after a restart; what never started stays uncommitted.
        while let Some(joined) = running.join_next().await {
            if let Ok((message, Ok(Processed::Done))) = joined {
                self.finished(&mut state, &message);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Marks `message` done and stores its partition's offset up to the lowest
    /// unfinished message.
    fn finished(&self, state: &mut InFlight, message: &Inbound) {
        if let Some(offset) = state.complete(message) {
            // Refused when a rebalance took the partition away mid-handling: its new
            // owner reads the message again, which handlers tolerate.
            if let Err(error) =
                self.consumer
                    .store_offset(&message.topic, message.partition, offset)
            {
                tracing::warn!(%error, "offset not stored; the partition moved");
            }
        }
    }

    /// Commits what was stored and leaves the group. librdkafka's close can hang after a
    /// rebalance, so it runs on a blocking thread with a deadline.
    async fn close(self) {
        let consumer = self.consumer;
        let closing = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "final offset commit failed"),
            }
            consumer.unsubscribe();
            drop(consumer);
        });
        if tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .is_err()
        {
            tracing::warn!("Kafka consumer did not close within 10 s; leaving it");
        }
        self.worker.dead_letters.flush(Duration::from_secs(5)).await;
    }
}

/// How many messages held until a due time the loop keeps per `max_in_flight` slot.
const HELD_PER_SLOT: usize = 64;

/// What the loop tracks between reading a message and storing its offset.
#[derive(Default)]
struct InFlight {
    /// Per (topic, partition): the offsets read and not yet stored, and whether each is
    /// finished.
    partitions: HashMap<(String, i32), BTreeMap<i64, bool>>,
    /// Keys with a message running; the messages of that key waiting their turn.
    keys: HashMap<String, VecDeque<Inbound>>,
    /// Messages read and not yet finished, but those held until a due time.
    count: usize,
    /// Messages held until their due time (scheduled retries): counted apart, so a
    /// backlog of retries never keeps due payments from being read.
    held: std::collections::HashSet<(String, i32, i64)>,
}

impl InFlight {
    /// Takes a message just read; returns it if it can start now (its key is free).
    fn admit(&mut self, message: Inbound) -> Option<Inbound> {
        let due_later = message
            .not_before()
            .is_some_and(|due| due > chrono::Utc::now().timestamp_millis());
        if due_later {
            self.held
                .insert((message.topic.clone(), message.partition, message.offset));
        } else {
            self.count += 1;
        }
        self.partitions
            .entry((message.topic.clone(), message.partition))
            .or_default()
            .insert(message.offset, false);
        match self.keys.get_mut(&key_of(&message)) {
            Some(waiting) => {
                waiting.push_back(message);
                None
            }
            None => {
                self.keys.insert(key_of(&message), VecDeque::new());
                Some(message)
            }
        }
    }

    /// Marks `message` finished; the offset to store for its partition, if the run of
    /// finished messages at the partition's start grew.
    fn complete(&mut self, message: &Inbound) -> Option<i64> {
        let offsets = self
            .partitions
            .get_mut(&(message.topic.clone(), message.partition))?;
        offsets.insert(message.offset, true);
        let mut stored = None;
        while let Some(entry) = offsets.first_entry() {
            if !*entry.get() {
                break;
            }
            stored = Some(*entry.key());
            entry.remove();
        }
        stored
    }

    /// `message` has ended (done, abandoned or failed): the next message of its key, if
    /// one is waiting.
    fn next_of_key(&mut self, message: &Inbound) -> Option<Inbound> {
        let id = (message.topic.clone(), message.partition, message.offset);
        if !self.held.remove(&id) {
            self.count = self.count.saturating_sub(1);
        }
        let key = key_of(message);
        let next = self.keys.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.keys.remove(&key);
        }
        next
    }
}

/// Messages of one key are handled one at a time, in order; a message without a key
/// orders with nothing.
fn key_of(message: &Inbound) -> String {
    match &message.key {
        Some(key) => key.clone(),
        None => format!(
            "\0{}/{}/{}",
            message.topic, message.partition, message.offset
        ),
    }
}

/// Handles one message: waits until it is due, runs the handler, retries transient
/// failures, dead-letters permanent ones.
#[derive(Clone)]
struct MessageWorker {
    attempts: u32,
    dead_letters: Producer,
}

impl MessageWorker {
    async fn process<H: Handler>(
        &self,
        handler: &H,
        message: &Inbound,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Processed> {
        if let Some(wait) = message.not_before().and_then(|due| {
            let now = chrono::Utc::now().timestamp_millis();
            u64::try_from(due - now).ok().map(Duration::from_millis)
        }) {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Processed::Abandoned),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let mut delays = retry::in_process(
            Duration::from_millis(100),
            Duration::from_secs(5),
            Some(self.attempts.saturating_sub(1) as usize),
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let failure = match handler.handle(message).await {
                Ok(()) => {
                    metrics::message(&message.topic, MessageOutcome::Handled, started.elapsed());
                    return Ok(Processed::Done);
                }
                Err(HandlerError::Permanent(error)) => {
                    let reason = format!("{error:#}");
                    tracing::error!(%reason, "message cannot be processed; dead-lettering it");
                    match self.dead_letters.dead_letter(message, &reason).await {
                        Ok(()) => {
                            metrics::message(
                                &message.topic,
                                MessageOutcome::DeadLettered,
                                started.elapsed(),
                            );
                            return Ok(Processed::Done);
                        }
                        Err(error) => error,
                    }
                }
                Err(HandlerError::Transient(error)) => error,
            };
            metrics::message(&message.topic, MessageOutcome::Failed, started.elapsed());
            let Some(delay) = delays.next() else {
                return Err(failure.context(format!(
                    "giving up on {}/{}/{} after {attempt} attempts",
                    message.topic, message.partition, message.offset
                )));
            };
            tracing::warn!(error = %format!("{failure:#}"), attempt, ?delay, "handler failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Processed::Abandoned),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

enum Processed {
    Done,
    Abandoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64, key: &str) -> Inbound {
        Inbound {
            topic: "t".to_owned(),
            partition,
            offset,
            key: Some(key.to_owned()),
            payload: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_key_runs_one_message_at_a_time_in_order_while_other_keys_run_beside_it() {
        let mut state = InFlight::default();
        assert!(state.admit(message(0, 0, "a")).is_some());
        assert!(state.admit(message(0, 1, "a")).is_none(), "a is busy");
        assert!(state.admit(message(0, 2, "b")).is_some(), "b is not");
        assert!(state.admit(message(0, 3, "a")).is_none());
        assert_eq!(state.count, 4);
        let next = state.next_of_key(&message(0, 0, "a")).unwrap();
        assert_eq!(next.offset, 1, "a's next, in order");
        assert_eq!(state.next_of_key(&next).unwrap().offset, 3);
        assert!(state.next_of_key(&message(0, 3, "a")).is_none());
        assert!(state.admit(message(0, 4, "a")).is_some(), "a is free again");
    }

    #[test]
    fn a_partition_offset_is_stored_only_up_to_its_lowest_unfinished_message() {
        let mut state = InFlight::default();
        for (offset, key) in [(10, "a"), (11, "b"), (12, "c")] {
            state.admit(message(0, offset, key));
        }
        state.admit(message(1, 5, "d"));
        assert_eq!(
            state.complete(&message(0, 11, "b")),
            None,
            "10 is unfinished"
        );
        assert_eq!(
            state.complete(&message(1, 5, "d")),
            Some(5),
            "partitions are apart"
        );
        assert_eq!(
            state.complete(&message(0, 10, "a")),
            Some(11),
            "10 and 11 are done"
        );
        assert_eq!(state.complete(&message(0, 12, "c")), Some(12));
    }

    #[test]
    fn messages_held_until_a_due_time_do_not_count_against_the_in_flight_limit() {
        let mut state = InFlight::default();
        let mut later = message(0, 0, "a");
        let due = chrono::Utc::now().timestamp_millis() + 60_000;
        later
            .headers
            .push((headers::NOT_BEFORE.to_owned(), due.to_string().into_bytes()));
        assert!(state.admit(later.clone()).is_some());
        assert_eq!((state.count, state.held.len()), (0, 1));
        state.next_of_key(&later);
        assert_eq!((state.count, state.held.len()), (0, 0));
    }

    #[test]
    fn a_run_of_failures_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let streak = FailureStreak::default();
        assert_eq!(streak.succeeded(), None, "no run, nothing to report");
        assert!(streak.failed());
        assert!(!streak.failed());
        assert!(!streak.failed());
        assert_eq!(streak.succeeded(), Some(3));
        assert_eq!(streak.succeeded(), None);
        assert!(streak.failed(), "a new run is reported again");
    }
}
