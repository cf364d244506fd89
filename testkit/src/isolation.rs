//! What isolates one test: its own database, settings with unique topics, consumer
//! groups and Redis prefix, port-0 listeners and short timers; and waiting for a result.

use std::time::Duration;

use rand::RngCore;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection, PgPool};

use paygate_common::config::{Environment, LogFormat, PartitionAssignment};
use paygate_common::{db, Settings};

pub(crate) fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A short random lowercase hex string, to keep tests' names apart.
pub fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

fn shared_admin_url() -> String {
    env(
        "PAYGATE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// Creates an empty database and returns its URL (nothing migrated yet).
pub async fn empty_database() -> String {
    empty_database_on(&shared_admin_url()).await
}

/// [`empty_database`] on the server that `admin_url` reaches (a test's own, say).
pub async fn empty_database_on(admin_url: &str) -> String {
    let name = unique(&env("PAYGATE_TEST_DB_PREFIX", "paygate_t_"));
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("PostgreSQL is not reachable: run the tests through scripts/test");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("PAYGATE_TEST_DATABASE_URL must end in /<database>"),
    }
}

/// The admin token every test's api takes.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Settings for one isolated test: a fresh database, unique topics, groups and Redis
/// prefix, every listener on port 0, and short timers.
pub async fn settings() -> Settings {
    settings_on(&shared_admin_url()).await
}

/// [`settings`] with the test's database on the server that `admin_url` reaches.
pub async fn settings_on(admin_url: &str) -> Settings {
    let mut settings = Settings::load().expect("the default settings load");
    let run = unique("t");
    // The development keys and loopback egress of the defaults: refused in production.
    settings.environment = Environment::Development;
    settings.log.format = LogFormat::Pretty;
    settings.database.url = SecretString::from(empty_database_on(admin_url).await);
    settings.database.max_connections = 5;
    settings.database.migrate_on_start = true;
    settings.redis.url = env("PAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379").into();
    settings.redis.key_prefix = format!("paygate-test:{run}");
    // Longer than a gateway call in tests (2 s timeout), short enough that a test which
    // kills a lock holder waits seconds, not tens of seconds.
    settings.redis.lock_ttl_ms = 5_000;
    settings.kafka.brokers = env("PAYGATE_TEST_KAFKA_BROKERS", "127.0.0.1:9092");
    settings.kafka.partitions = 3;
    settings.kafka.group_prefix = format!("paygate-test.{run}");
    settings.kafka.handler_attempts = 5;
    // One replica per service against tansu: see PartitionAssignment::All.
    settings.kafka.partition_assignment = PartitionAssignment::All;
    let topics = &mut settings.kafka.topics;
    for topic in [
        &mut topics.payments_requested,
        &mut topics.payments_retry,
        &mut topics.gateway_callbacks,
        &mut topics.transactions_status,
        &mut topics.settlement_commands,
    ] {
        *topic = format!("{run}.{topic}");
    }
    settings.outbox.poll_interval_ms = 200;
    // Settlement runs start when a test asks, and are noticed quickly.
    settings.payment_processor.settlement.scheduled = false;
    settings.payment_processor.settlement.poll_interval_ms = 200;
    settings.payment_processor.settlement.lease_ms = 5_000;
    settings.payment_processor.settlement.fetch_backoff_ms = 100;
    // A relay killed holding a claim delays its rows by the lease: keep it short (it
    // must outlast a produce's timeout, so that is short too).
    settings.kafka.message_timeout_ms = 8_000;
    settings.outbox.lease_ms = 10_000;
    settings.api.listen = "127.0.0.1:0".to_owned();
    settings.payment_processor.listen = "127.0.0.1:0".to_owned();
    settings.callback_processor.listen = "127.0.0.1:0".to_owned();
    settings.callback_dispatcher.listen = "127.0.0.1:0".to_owned();
    for metrics in [
        &mut settings.api.metrics_listen,
        &mut settings.payment_processor.metrics_listen,
        &mut settings.callback_processor.metrics_listen,
        &mut settings.callback_dispatcher.metrics_listen,
    ] {
        *metrics = "127.0.0.1:0".to_owned();
    }
    settings.callback_dispatcher.retry_delays_ms = vec![200, 500, 1000];
    settings.callback_dispatcher.poll_interval_ms = 100;
    settings.callback_dispatcher.request_timeout_ms = 2_000;
    settings.admin.token = SecretString::from(ADMIN_TOKEN.to_owned());
    // Seconds-scale retries, a quick reconciler and route reloads.
    let processor = &mut settings.payment_processor;
    processor.retry_base_ms = 100;
    processor.retry_cap_ms = 400;
    processor.retry_attempts = 4;
    processor.reconcile_interval_ms = 500;
    // Longer than any test keeps a payment waiting on purpose.
    processor.stale_pending_ms = 30_000;
    processor.route_refresh_ms = 500;
    settings.validate().unwrap();
    settings
}

/// The secrets key ring every test's services seal webhook and callback secrets with
/// (the defaults').
pub fn keys() -> paygate_common::cards::KeyRing {
    let settings = Settings::load().expect("the default settings load");
    settings.secrets.key_ring().unwrap()
}

/// The card key ring every test's services seal cards with (the defaults').
pub fn card_keys() -> paygate_common::cards::KeyRing {
    let settings = Settings::load().expect("the default settings load");
    settings.cards.key_ring().unwrap()
}

/// A migrated pool on the test's database.
pub async fn pool(settings: &Settings) -> PgPool {
    db::connect(&settings.database).await.unwrap()
}

/// Waits until `check` returns `Some`, polling every 50 ms, or panics after `timeout`
/// naming `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` and reads its JSON answer, whatever the status.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}
