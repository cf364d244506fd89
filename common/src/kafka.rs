//! Kafka plumbing on rdkafka: an idempotent producer (`acks=all`), topic creation at
//! start (the broker may not auto-create), and an at-least-once consumer loop that
//! stores a message's offset only after its handler succeeded.
//!
//! The handler decides what a failure means. A [`HandlerError::Permanent`] message can
//! never succeed (it does not decode, it names nothing we know): it goes to the topic's
//! dead-letter topic with the reason and is then committed. A
//! [`HandlerError::Transient`] one (database or gateway down) is retried in place with
//! backoff; when the attempts run out the loop returns the error without committing, the
//! service stops, and its supervisor restarts it, so the message is consumed again.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{KafkaSettings, PartitionAssignment, Topics};
use crate::events::SCHEMA_VERSION;
use crate::retry::backoff;

/// Header names carried by every Paygate message.
pub mod headers {
    pub const EVENT_ID: &str = "event-id";
    pub const EVENT_TYPE: &str = "event-type";
    pub const SCHEMA_VERSION: &str = "schema-version";
    pub const CONTENT_TYPE: &str = "content-type";
    /// Set on dead-lettered messages: why the consumer gave up.
    pub const DLQ_REASON: &str = "dlq-reason";
    /// Set on dead-lettered messages: where the message was read from.
    pub const DLQ_SOURCE: &str = "dlq-source";
}

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("log_level", "4");
    config
}

/// Creates the topics that are missing (the broker may not create them on first use).
/// Topics that already exist are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings)
        .create()
        .context("creating the Kafka admin client")?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .context("creating Kafka topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Every topic of the suite and their dead-letter topics.
pub fn all_topics(topics: &Topics) -> Vec<String> {
    topics
        .all()
        .iter()
        .flat_map(|t| [t.to_string(), Topics::dead_letter(t)])
        .collect()
}

/// An idempotent producer: `acks=all`, retries without duplicates or reordering.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

/// Identifies one message for its headers.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a [u8],
}

impl Producer {
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let inner = base_config(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "none")
            .set(
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            )
            .create()
            .context("creating the Kafka producer")?;
        Ok(Producer { inner })
    }

    /// Hands a message to the producer and returns the future of its delivery report, so
    /// a batch can be enqueued at once and awaited together.
    pub fn enqueue(&self, envelope: &Envelope<'_>) -> anyhow::Result<DeliveryFuture> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::EVENT_ID,
                value: Some(envelope.event_id),
            })
            .insert(Header {
                key: headers::EVENT_TYPE,
                value: Some(envelope.event_type),
            })
            .insert(Header {
                key: headers::SCHEMA_VERSION,
                value: Some(SCHEMA_VERSION),
            })
            .insert(Header {
                key: headers::CONTENT_TYPE,
                value: Some("application/x-protobuf"),
            });
        self.enqueue_with_headers(envelope.topic, envelope.key, envelope.payload, headers)
    }

    fn enqueue_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> anyhow::Result<DeliveryFuture> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.inner.send_result(record).map_err(|(error, _)| {
            anyhow::Error::new(error).context(format!("enqueueing to {topic}"))
        })
    }

    /// Sends one message and waits until the broker acknowledged it.
    pub async fn send(&self, envelope: &Envelope<'_>) -> anyhow::Result<()> {
        let delivery = self.enqueue(envelope)?;
        await_delivery(delivery, envelope.topic).await
    }

    /// Copies a message the consumer gave up on to `<topic>.dlq`, with the reason.
    pub async fn dead_letter(&self, message: &Inbound, reason: &str) -> anyhow::Result<()> {
        let topic = Topics::dead_letter(&message.topic);
        let source = format!("{}/{}/{}", message.topic, message.partition, message.offset);
        let mut headers = OwnedHeaders::new();
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let headers = headers
            .insert(Header {
                key: headers::DLQ_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::DLQ_SOURCE,
                value: Some(&source),
            });
        let key = message.key.as_deref().unwrap_or_default();
        let delivery = self.enqueue_with_headers(&topic, key, &message.payload, headers)?;
        await_delivery(delivery, &topic).await
    }

    /// Waits for in-flight messages before the process exits.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.inner.flush(timeout) {
            tracing::warn!(%error, "producer flush did not finish");
        }
    }
}

/// Waits for a delivery report.
pub async fn await_delivery(delivery: DeliveryFuture, topic: &str) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => {
            Err(anyhow::Error::new(error).context(format!("producing to {topic}")))
        }
        Err(_cancelled) => anyhow::bail!("producer dropped the message for {topic}"),
    }
}

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

/// Logs rebalances and commit failures, which are otherwise silent.
struct LoggingContext;

impl ClientContext for LoggingContext {}

impl ConsumerContext for LoggingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "partitions about to be rebalanced");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "partitions rebalanced");
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "offset commit failed"),
        }
    }
}

/// A consumer group member subscribed to some topics.
pub struct ConsumerLoop {
    consumer: StreamConsumer<LoggingContext>,
    attempts: u32,
    dead_letters: Producer,
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
            .create_with_context(LoggingContext)
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
            }
        }
        Ok(ConsumerLoop {
            consumer,
            attempts: settings.handler_attempts,
            dead_letters: Producer::new(settings)?,
        })
    }

    /// Consumes until `shutdown` is cancelled (then commits what was done and returns
    /// `Ok`) or a transient failure outlasts its retries (then returns the error, leaving
    /// the message uncommitted).
    pub async fn run<H: Handler>(
        self,
        handler: &H,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let result = self.consume(handler, &shutdown).await;
        self.close().await;
        result
    }

    async fn consume<H: Handler>(
        &self,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "Kafka consumer error");
                    continue;
                }
            };
            let inbound = Inbound::from_borrowed(&message);
            let span = tracing::info_span!(
                "message",
                topic = %inbound.topic,
                partition = inbound.partition,
                offset = inbound.offset,
                key = inbound.key.as_deref().unwrap_or_default(),
            );
            match self
                .process(handler, &inbound, shutdown)
                .instrument(span)
                .await?
            {
                Processed::Done => {
                    // Refused when a rebalance took the partition away mid-handling: its
                    // new owner reads the message again, which handlers tolerate.
                    if let Err(error) = self.consumer.store_offset_from_message(&message) {
                        tracing::warn!(%error, "offset not stored; the partition moved");
                    }
                }
                // Shutting down mid-retry: leave the message uncommitted for the next owner.
                Processed::Abandoned => return Ok(()),
            }
        }
    }

    async fn process<H: Handler>(
        &self,
        handler: &H,
        message: &Inbound,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Processed> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match handler.handle(message).await {
                Ok(()) => return Ok(Processed::Done),
                Err(HandlerError::Permanent(error)) => {
                    let reason = format!("{error:#}");
                    tracing::error!(%reason, "message cannot be processed; dead-lettering it");
                    match self.dead_letters.dead_letter(message, &reason).await {
                        Ok(()) => return Ok(Processed::Done),
                        Err(error) => error,
                    }
                }
                Err(HandlerError::Transient(error)) => error,
            };
            if attempt >= self.attempts {
                return Err(failure.context(format!(
                    "giving up on {}/{}/{} after {attempt} attempts",
                    message.topic, message.partition, message.offset
                )));
            }
            let delay = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            tracing::warn!(error = %format!("{failure:#}"), attempt, ?delay, "handler failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Processed::Abandoned),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Commits what was stored and leaves the group. librdkafka's close can hang after a
    /// rebalance, so it runs on a blocking thread with a deadline.
    async fn close(self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "final offset commit failed"),
        }
        self.consumer.unsubscribe();
        let consumer = self.consumer;
        let closing = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .is_err()
        {
            tracing::warn!("Kafka consumer did not close within 5 s; leaving it");
        }
        self.dead_letters.flush(Duration::from_secs(5));
    }
}

enum Processed {
    Done,
    Abandoned,
}
