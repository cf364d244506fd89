//! An idempotent producer (`acks=all`): retries without duplicates or reordering.
//!
//! **A delivery that timed out renews the producer.** librdkafka's idempotent producer
//! answers a message timeout by bumping its epoch locally (KIP-360), and tansu 0.6.0's
//! storage panics on a produce whose epoch it never issued, after which that broker
//! stores nothing until it restarts. So after a timeout (an outage longer than
//! `kafka.message_timeout_ms`) the producer is dropped, purging what it had queued, and
//! replaced by a new one (a new producer id at epoch 0) before anything else is sent;
//! every clone shares the replacement. Apache Kafka accepts the bump; the new producer
//! costs it one `InitProducerId`. Whoever awaited the purged messages sees them fail
//! and retries, as after any failed produce.
//!
//! **Delivery reports are served by a thread of its own that waits a second at a time.**
//! rdkafka's `FutureProducer` serves them from a thread that polls for 100 ms at a time,
//! and its poll loop counts the time left in whole milliseconds: the last millisecond
//! of every poll became polls that return at once, a busy loop of about 1 % of a core
//! per producer, idle or not (7–8 % of a core across an idle stack's producers, more than
//! all their async workers). A report still arrives the moment librdkafka has it: a
//! poll returns with each one. The wait is only how often the loop comes round with
//! nothing to do, and how long a dropped producer's thread lingers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig,
};
use tokio::sync::oneshot;

use super::{base_config, headers, Inbound};
use crate::config::{KafkaSettings, Topics};
use crate::events::SCHEMA_VERSION;
use crate::trace::{self, TraceContext, TRACEPARENT};

/// An idempotent producer: `acks=all`, retries without duplicates or reordering.
/// Clones share one librdkafka producer, and its replacement after a timeout.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Mutex<Current>>,
    config: Arc<ClientConfig>,
}

/// The librdkafka producer in use, and how many times it was renewed: many sends that
/// time out together (a consumer's in-flight messages in one outage) renew it once.
struct Current {
    generation: u64,
    producer: Arc<Polled>,
}

/// How long the delivery-report thread waits in one poll (see the module).
const POLL_WAIT: Duration = Duration::from_secs(1);

/// The broker's answer for one message, once librdkafka has it.
pub type Delivery = oneshot::Receiver<KafkaResult<()>>;

/// Hands each delivery report to whoever waits for it.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        // Nobody may wait any more (a caller that gave up): nothing to tell.
        let _ = reply.send(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|(error, _)| error.clone()),
        );
    }
}

/// A librdkafka producer and the thread that serves its delivery reports.
struct Polled {
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
}

impl Polled {
    fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Deliveries>> =
            Arc::new(config.create_with_context(Deliveries)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, stopped) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("producer reports".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    serving.poll(POLL_WAIT);
                }
            })
            .map_err(|error| KafkaError::ClientCreation(error.to_string()))?;
        Ok(Polled { producer, stop })
    }
}

impl Drop for Polled {
    /// Purges what is queued at once (a renewed producer must send nothing more), and
    /// lets the thread go: it ends within [`POLL_WAIT`], and the librdkafka producer
    /// with it, telling whoever waits that their messages were purged.
    fn drop(&mut self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        self.stop.store(true, Ordering::Relaxed);
    }
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
        let mut config = base_config(settings);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "none")
            .set(
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            );
        let producer = Polled::new(&config).context("creating the Kafka producer")?;
        Ok(Producer {
            inner: Arc::new(Mutex::new(Current {
                generation: 0,
                producer: Arc::new(producer),
            })),
            config: Arc::new(config),
        })
    }

    /// The librdkafka producer messages go to now, and its generation.
    fn current(&self) -> (u64, Arc<Polled>) {
        let current = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (current.generation, Arc::clone(&current.producer))
    }

    /// Replaces the librdkafka producer after a delivery timed out (see the module).
    pub async fn renew(&self) {
        let (generation, _) = self.current();
        self.renew_generation(generation).await;
    }

    /// Replaces the producer if it is still `generation` (the one whose delivery timed
    /// out). The old one is dropped on a blocking thread: dropping purges its queue.
    async fn renew_generation(&self, generation: u64) {
        let fresh = match Polled::new(&self.config) {
            Ok(fresh) => Arc::new(fresh),
            Err(error) => {
                tracing::warn!(%error, "cannot renew the Kafka producer");
                return;
            }
        };
        let old = {
            let mut current = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if current.generation != generation {
                return; // another timed-out send renewed it already
            }
            current.generation += 1;
            std::mem::replace(&mut current.producer, fresh)
        };
        tracing::info!("a produce timed out: renewed the Kafka producer");
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    }

    /// Awaits a delivery, renewing its producer if it timed out.
    async fn delivered(
        &self,
        (delivery, generation): (Delivery, u64),
        topic: &str,
    ) -> anyhow::Result<()> {
        let delivered = await_delivery(delivery, topic).await;
        if delivered.as_ref().is_err_and(is_timeout) {
            self.renew_generation(generation).await;
        }
        delivered
    }

    /// Hands a message to the producer and returns the future of its delivery report, so
    /// a batch can be enqueued at once and awaited together.
    pub fn enqueue(&self, envelope: &Envelope<'_>) -> anyhow::Result<Delivery> {
        self.enqueue_standard(envelope)
            .map(|(delivery, _)| delivery)
    }

    fn enqueue_standard(&self, envelope: &Envelope<'_>) -> anyhow::Result<(Delivery, u64)> {
        self.enqueue_with_headers(
            envelope.topic,
            envelope.key,
            envelope.payload,
            standard_headers(envelope),
        )
    }

    /// Sends a message that its consumer holds until `not_before` (unix milliseconds),
    /// and waits until the broker acknowledged it.
    pub async fn schedule(&self, envelope: &Envelope<'_>, not_before: i64) -> anyhow::Result<()> {
        let headers = standard_headers(envelope).insert(Header {
            key: headers::NOT_BEFORE,
            value: Some(&not_before.to_string()),
        });
        let delivery =
            self.enqueue_with_headers(envelope.topic, envelope.key, envelope.payload, headers)?;
        self.delivered(delivery, envelope.topic).await
    }

    fn enqueue_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> anyhow::Result<(Delivery, u64)> {
        let (reply, delivery) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(reply))
            .key(key)
            .payload(payload)
            .headers(headers);
        let (generation, current) = self.current();
        current.producer.send(record).map_err(|(error, _)| {
            anyhow::Error::new(error).context(format!("enqueueing to {topic}"))
        })?;
        Ok((delivery, generation))
    }

    /// Sends one message and waits until the broker acknowledged it.
    pub async fn send(&self, envelope: &Envelope<'_>) -> anyhow::Result<()> {
        let delivery = self.enqueue_standard(envelope)?;
        self.delivered(delivery, envelope.topic).await
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
        self.delivered(delivery, &topic).await
    }

    /// Waits for in-flight messages before the process exits. librdkafka's flush
    /// blocks, so it runs on a blocking thread, never on the async workers.
    pub async fn flush(&self, timeout: Duration) {
        let (_, inner) = self.current();
        let flushed = tokio::task::spawn_blocking(move || inner.producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "producer flush did not finish"),
            Err(error) => tracing::warn!(%error, "producer flush panicked"),
        }
    }

    /// Whether a broker answers a metadata request for `topic` within `timeout` (on a
    /// blocking thread: librdkafka's call blocks).
    pub async fn reachable(&self, topic: &str, timeout: Duration) -> anyhow::Result<()> {
        let (_, inner) = self.current();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            inner
                .producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
        })
        .await
        .context("the metadata request panicked")?
        .context("no broker answered a metadata request")
    }
}

/// The headers every Paygate message carries, and its trace context: the current
/// trace's (a consumer producing inside a message's trace), or else the payment's the
/// key names.
fn standard_headers(envelope: &Envelope<'_>) -> OwnedHeaders {
    let trace = trace::outgoing()
        .or_else(|| TraceContext::for_transaction(envelope.key).map(|context| context.header()));
    let headers = match trace {
        Some(traceparent) => OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(&traceparent),
        }),
        None => OwnedHeaders::new(),
    };
    headers
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
        })
}

/// Whether a produce failed because its message timed out in the producer.
pub fn is_timeout(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<KafkaError>(),
        Some(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        ))
    )
}

/// Waits for a delivery report.
pub async fn await_delivery(delivery: Delivery, topic: &str) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(anyhow::Error::new(error).context(format!("producing to {topic}"))),
        Err(_dropped) => anyhow::bail!("producer dropped the message for {topic}"),
    }
}
