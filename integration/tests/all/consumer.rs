//! The at-least-once consumer loop against the real broker, in both ways of getting
//! partitions: as a member of the consumer group, and owning every partition; and a
//! batched handler whose batch holds a poison message.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paygate_common::config::{KafkaSettings, PartitionAssignment, Topics};
use paygate_common::kafka::{
    self, headers, BatchHandler, Batched, ConsumerLoop, Envelope, Handler, HandlerError, Inbound,
    Producer,
};
use paygate_testkit::{eventually, unique};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Records what it sees; fails (as told) while `failures_left` is above zero.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Inbound>>>,
    failures_left: Arc<AtomicU32>,
    permanent: bool,
}

impl Recorder {
    fn failing(times: u32, permanent: bool) -> Self {
        Recorder {
            failures_left: Arc::new(AtomicU32::new(times)),
            permanent,
            ..Recorder::default()
        }
    }

    fn payloads(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }
}

impl Handler for Recorder {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(message.clone());
        let left = self.failures_left.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.failures_left.store(left - 1, Ordering::SeqCst);
        let error = anyhow::anyhow!("told to fail");
        Err(if self.permanent {
            HandlerError::Permanent(error)
        } else {
            HandlerError::Transient(error)
        })
    }
}

const MODES: [PartitionAssignment; 2] = [PartitionAssignment::Group, PartitionAssignment::All];

async fn kafka_with_topic(mode: PartitionAssignment) -> (KafkaSettings, String) {
    let mut settings = paygate_testkit::settings().await.kafka;
    settings.handler_attempts = 3;
    settings.partition_assignment = mode;
    let topic = unique("consumer-test.");
    kafka::ensure_topics(&settings, &[&topic, &Topics::dead_letter(&topic)])
        .await
        .unwrap();
    (settings, topic)
}

async fn produce(settings: &KafkaSettings, topic: &str, payload: &str) {
    let producer = Producer::new(settings).unwrap();
    producer
        .send(&Envelope {
            topic,
            key: "txn_key",
            event_id: payload,
            event_type: "test",
            payload: payload.as_bytes(),
        })
        .await
        .unwrap();
}

fn start(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    handler: Recorder,
) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let consumer = ConsumerLoop::subscribe(settings, group, &[topic]).unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { consumer.run(std::sync::Arc::new(handler), token).await }),
    )
}

/// Runs a member of `group` with `recorder` until it has handled `seen` messages, a
/// moment longer (a redelivery would show), then stops it and expects a clean exit.
async fn consume_until(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    recorder: &Recorder,
    seen: usize,
    what: &str,
) {
    let (shutdown, running) = start(settings, group, topic, recorder.clone());
    eventually(what, Duration::from_secs(30), || {
        let recorder = recorder.clone();
        async move { (recorder.payloads().len() >= seen).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_committed_only_after_its_handler_succeeded() {
    for mode in MODES {
        let (settings, topic) = kafka_with_topic(mode).await;
        let group = unique("group-");
        produce(&settings, &topic, "first").await;

        // Fails twice (transiently), then succeeds: retried in place, then committed.
        let flaky = Recorder::failing(2, false);
        consume_until(
            &settings,
            &group,
            &topic,
            &flaky,
            3,
            "three attempts at the first message",
        )
        .await;
        assert_eq!(flaky.payloads(), ["first", "first", "first"]);

        // The next member of the group starts after it: the first message was committed.
        produce(&settings, &topic, "second").await;
        let next = Recorder::default();
        consume_until(&settings, &group, &topic, &next, 1, "the second message").await;
        assert_eq!(next.payloads(), ["second"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_handler_keeps_failing_is_left_for_the_next_member_of_the_group() {
    for mode in MODES {
        let (settings, topic) = kafka_with_topic(mode).await;
        let group = unique("group-");
        produce(&settings, &topic, "stubborn").await;

        let broken = Recorder::failing(u32::MAX, false);
        let (_shutdown, running) = start(&settings, &group, &topic, broken.clone());
        let outcome = tokio::time::timeout(Duration::from_secs(60), running)
            .await
            .unwrap()
            .unwrap();
        assert!(
            outcome.is_err(),
            "the loop gives up with the error once the attempts run out"
        );
        assert_eq!(broken.payloads(), ["stubborn", "stubborn", "stubborn"]);

        let healthy = Recorder::default();
        consume_until(
            &settings,
            &group,
            &topic,
            &healthy,
            1,
            "the uncommitted message again",
        )
        .await;
        let seen = healthy.seen.lock().unwrap().clone();
        assert_eq!(seen[0].payload, b"stubborn");
        assert_eq!(seen[0].offset, broken.seen.lock().unwrap()[0].offset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_topic_with_its_reason_and_is_committed() {
    for mode in MODES {
        let (settings, topic) = kafka_with_topic(mode).await;
        let group = unique("group-");
        produce(&settings, &topic, "poison").await;

        let refusing = Recorder::failing(1, true);
        let (shutdown, running) = start(&settings, &group, &topic, refusing.clone());
        let dead = Recorder::default();
        let (dead_shutdown, dead_running) = start(
            &settings,
            &unique("dlq-"),
            &Topics::dead_letter(&topic),
            dead.clone(),
        );
        eventually("the dead-lettered copy", Duration::from_secs(30), || {
            let dead = dead.clone();
            async move { (!dead.payloads().is_empty()).then_some(()) }
        })
        .await;
        let copy = dead.seen.lock().unwrap()[0].clone();
        assert_eq!(copy.payload, b"poison");
        assert!(copy
            .header(headers::DLQ_REASON)
            .unwrap()
            .contains("told to fail"));
        assert_eq!(copy.header(headers::EVENT_ID), Some("poison"));
        assert_eq!(copy.key.as_deref(), Some("txn_key"));

        shutdown.cancel();
        running.await.unwrap().unwrap();
        dead_shutdown.cancel();
        dead_running.await.unwrap().unwrap();
        assert_eq!(
            refusing.payloads(),
            ["poison"],
            "a permanent failure is not retried"
        );

        produce(&settings, &topic, "after").await;
        let next = Recorder::default();
        consume_until(
            &settings,
            &group,
            &topic,
            &next,
            1,
            "the message after the poison",
        )
        .await;
        assert_eq!(next.payloads(), ["after"]);
    }
}

/// Inserts each message's payload into its own table, a batch in one statement; the
/// table refuses the payload "poison". Remembers every batch it was given.
#[derive(Clone)]
struct Ledger {
    pool: sqlx::PgPool,
    batches: Arc<Mutex<Vec<Vec<String>>>>,
}

impl BatchHandler for Ledger {
    type Item = String;

    async fn prepare(&self, message: &Inbound) -> Result<Option<String>, HandlerError> {
        Ok(Some(String::from_utf8_lossy(&message.payload).into_owned()))
    }

    async fn apply(&self, items: &[String]) -> Result<(), HandlerError> {
        self.batches.lock().unwrap().push(items.to_vec());
        // Slow enough that the messages behind the first gather into one batch.
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("INSERT INTO ledger (payload) SELECT unnest($1::text[])")
            .bind(items)
            .execute(&self.pool)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(db) if db.is_check_violation() => {
                    HandlerError::permanent(error)
                }
                _ => HandlerError::transient(error),
            })?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_poison_message_delivers_every_other_message_once() {
    let (mut kafka, topic) = kafka_with_topic(PartitionAssignment::All).await;
    kafka.max_in_flight = 64;
    let settings = paygate_testkit::settings().await;
    let pool = paygate_testkit::pool(&settings).await;
    sqlx::query("CREATE TABLE ledger (payload text NOT NULL CHECK (payload <> 'poison'))")
        .execute(&pool)
        .await
        .unwrap();
    let mut payloads: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    payloads.insert(7, "poison".to_owned());
    let producer = Producer::new(&kafka).unwrap();
    for (i, payload) in payloads.iter().enumerate() {
        producer
            .send(&Envelope {
                topic: &topic,
                key: &format!("txn_{i}"),
                event_id: payload,
                event_type: "test",
                payload: payload.as_bytes(),
            })
            .await
            .unwrap();
    }

    let ledger = Ledger {
        pool: pool.clone(),
        batches: Arc::default(),
    };
    let consumer = ConsumerLoop::subscribe(&kafka, &unique("group-"), &[&topic]).unwrap();
    let shutdown = CancellationToken::new();
    let handler = Arc::new(Batched::new(ledger.clone(), 64, 1));
    let running = tokio::spawn(consumer.run(handler, shutdown.clone()));
    let dead = Recorder::default();
    let (dead_shutdown, dead_running) = start(
        &kafka,
        &unique("dlq-"),
        &Topics::dead_letter(&topic),
        dead.clone(),
    );
    let stored = || async {
        let mut stored: Vec<String> = sqlx::query_scalar("SELECT payload FROM ledger")
            .fetch_all(&pool)
            .await
            .unwrap();
        stored.sort();
        stored
    };
    eventually(
        "every good message stored and the poison dead-lettered",
        Duration::from_secs(30),
        || async { (stored().await.len() >= 20 && !dead.payloads().is_empty()).then_some(()) },
    )
    .await;
    // A redelivery or a second application would show by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    dead_shutdown.cancel();
    dead_running.await.unwrap().unwrap();

    let mut good: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    good.sort();
    assert_eq!(
        stored().await,
        good,
        "every other message applied exactly once"
    );
    assert_eq!(
        dead.payloads(),
        ["poison"],
        "the poison alone is dead-lettered"
    );
    let batches = ledger.batches.lock().unwrap().clone();
    assert!(
        batches
            .iter()
            .any(|batch| batch.len() > 1 && batch.contains(&"poison".to_owned())),
        "the poison was applied in a batch with others: {batches:?}"
    );
}
