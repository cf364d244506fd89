//! Test support: every test gets its own PostgreSQL database, its own topic names and
//! consumer groups, its own Redis key prefix and port-0 listeners, against the real
//! PostgreSQL, Redis and Kafka-protocol broker that `scripts/test` starts. Third parties
//! (the gateway simulator, a merchant's webhook endpoint) run over real HTTP.
//!
//! Where things are comes from the environment, with the local defaults:
//! `PAYGATE_TEST_DATABASE_URL` (an admin connection, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `PAYGATE_TEST_KAFKA_BROKERS`
//! (default `127.0.0.1:9092`) and `PAYGATE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: failing loudly is the point

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use rand::RngCore;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paygate_common::config::LogFormat;
use paygate_common::gateway::{self, GatewayConfig, Protocol, Route};
use paygate_common::{db, Settings};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A short random lowercase hex string, to keep tests' names apart.
pub fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Creates an empty database and returns its URL (nothing migrated yet).
pub async fn empty_database() -> String {
    let admin_url = env(
        "PAYGATE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let name = unique("paygate_t_");
    let mut admin = PgConnection::connect(&admin_url)
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

/// Settings for one isolated test: a fresh database, unique topics, groups and Redis
/// prefix, every listener on port 0, and short timers.
pub async fn settings() -> Settings {
    let mut settings = Settings::load().expect("the default settings load");
    let run = unique("t");
    settings.log.format = LogFormat::Pretty;
    settings.database.url = SecretString::from(empty_database().await);
    settings.database.max_connections = 5;
    settings.database.migrate_on_start = true;
    settings.redis.url = env("PAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
    settings.redis.key_prefix = format!("paygate-test:{run}");
    settings.kafka.brokers = env("PAYGATE_TEST_KAFKA_BROKERS", "127.0.0.1:9092");
    settings.kafka.partitions = 3;
    settings.kafka.group_prefix = format!("paygate-test.{run}");
    settings.kafka.handler_attempts = 5;
    let topics = &mut settings.kafka.topics;
    for topic in [
        &mut topics.payments_requested,
        &mut topics.payments_retry,
        &mut topics.gateway_callbacks,
        &mut topics.transactions_status,
    ] {
        *topic = format!("{run}.{topic}");
    }
    settings.outbox.poll_interval_ms = 200;
    settings.api.listen = "127.0.0.1:0".to_owned();
    settings.payment_processor.listen = "127.0.0.1:0".to_owned();
    settings.callback_processor.listen = "127.0.0.1:0".to_owned();
    settings.callback_dispatcher.listen = "127.0.0.1:0".to_owned();
    settings.callback_dispatcher.retry_delays_ms = vec![200, 500, 1000];
    settings.callback_dispatcher.poll_interval_ms = 100;
    settings.validate().unwrap();
    settings
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

/// A webhook as the test merchant received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A merchant's webhook endpoint over real HTTP: records every request and answers with
/// the next scripted status (200 once the script runs out).
#[derive(Clone)]
pub struct WebhookReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Vec<StatusCode>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// Answers the first requests with `script`, in order, then 200.
    pub async fn start_with(script: Vec<StatusCode>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks", listener.local_addr().unwrap());
        let receiver = WebhookReceiver {
            url,
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.into_iter().rev().collect())),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/webhooks",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    state
                        .received
                        .lock()
                        .unwrap()
                        .push(Received { headers, body });
                    state.script.lock().unwrap().pop().unwrap_or(StatusCode::OK)
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The JSON gateway of the simulator, as Paygate's configuration knows it.
pub const SIM_JSON_SECRET: &str = "test-simjson-secret";

/// Starts the gateway simulator on port 0; returns its base URL.
pub async fn start_simulator(shutdown: CancellationToken) -> String {
    let simulator = paygate_gateway_sim::Simulator::build(paygate_gateway_sim::SimConfig {
        listen: "127.0.0.1:0".to_owned(),
        json_secret: SIM_JSON_SECRET.to_owned(),
        callback_delay: Duration::from_millis(50),
        slow_answer: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{}", simulator.port());
    tokio::spawn(simulator.run(shutdown));
    url
}

/// Registers the simulator's JSON gateway as `simjson` and routes everything to it.
pub async fn route_everything_to_simulator(pool: &PgPool, simulator_url: &str) {
    gateway::upsert(
        pool,
        &GatewayConfig {
            code: "simjson".to_owned(),
            protocol: Protocol::Json,
            base_url: format!("{simulator_url}/json"),
            callback_secret: SIM_JSON_SECRET.to_owned(),
            timeout_ms: 2_000,
            enabled: true,
        },
    )
    .await
    .unwrap();
    gateway::upsert_route(
        pool,
        &Route {
            country: None,
            currency: None,
            kind: None,
            priority: 100,
            gateway_code: "simjson".to_owned(),
        },
    )
    .await
    .unwrap();
}

/// A service running in this process, stoppable on its own.
pub struct Running {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(shutdown.clone()));
        Running { shutdown, handle }
    }

    /// Stops it gracefully and returns how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await.unwrap()
    }
}

/// All four services, the simulator and a merchant endpoint, in this process.
pub struct Suite {
    pub settings: Settings,
    pub pool: PgPool,
    pub api_url: String,
    pub simulator_url: String,
    pub merchant: paygate_api::merchants::NewMerchant,
    pub webhooks: WebhookReceiver,
    pub http: reqwest::Client,
    pub api: Running,
    pub payment_processor: Running,
    pub callback_processor: Running,
    pub callback_dispatcher: Running,
    simulator: CancellationToken,
}

impl Suite {
    pub async fn start() -> Self {
        let mut settings = settings().await;
        let pool = pool(&settings).await;

        let api = paygate_api::Application::build(settings.clone())
            .await
            .unwrap();
        let api_url = format!("http://127.0.0.1:{}", api.port());
        settings.api.public_url = api_url.clone();
        let api = Running::spawn(|s| api.run(s));

        let simulator = CancellationToken::new();
        let simulator_url = start_simulator(simulator.clone()).await;
        route_everything_to_simulator(&pool, &simulator_url).await;
        let webhooks = WebhookReceiver::start().await;
        let merchant =
            paygate_api::merchants::create(&pool, "Test merchant", Some(&webhooks.url), None)
                .await
                .unwrap();

        let payment_processor = paygate_payment_processor::Application::build(settings.clone())
            .await
            .unwrap();
        let payment_processor = Running::spawn(|s| payment_processor.run(s));
        let callback_processor = paygate_callback_processor::Application::build(settings.clone())
            .await
            .unwrap();
        let callback_processor = Running::spawn(|s| callback_processor.run(s));
        let callback_dispatcher = paygate_callback_dispatcher::Application::build(settings.clone())
            .await
            .unwrap();
        let callback_dispatcher = Running::spawn(|s| callback_dispatcher.run(s));

        Suite {
            settings,
            pool,
            api_url,
            simulator_url,
            merchant,
            webhooks,
            http: reqwest::Client::new(),
            api,
            payment_processor,
            callback_processor,
            callback_dispatcher,
            simulator,
        }
    }

    /// A request to the api, authenticated as the test merchant.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&self.merchant.api_key)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&self.merchant.api_key)
    }

    /// Stops every service gracefully, asserting each one ended cleanly.
    pub async fn stop(self) {
        for (name, service) in [
            ("api", self.api),
            ("payment-processor", self.payment_processor),
            ("callback-processor", self.callback_processor),
            ("callback-dispatcher", self.callback_dispatcher),
        ] {
            if let Err(error) = service.stop().await {
                panic!("{name} ended with an error: {error:#}");
            }
        }
        self.simulator.cancel();
        self.pool.close().await;
    }
}
