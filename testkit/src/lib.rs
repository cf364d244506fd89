//! Test support: every test gets its own PostgreSQL database, its own topic names and
//! consumer groups, its own Redis key prefix and port-0 listeners, against the real
//! PostgreSQL, Redis and Kafka-protocol broker that `scripts/test` starts. Third parties
//! (the gateway simulator, a merchant's webhook endpoint) run over real HTTP.
//!
//! Where things are comes from the environment, with the local defaults:
//! `PAYGATE_TEST_DATABASE_URL` (an admin connection, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `PAYGATE_TEST_KAFKA_BROKERS`
//! (default `127.0.0.1:9092`) and `PAYGATE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Test databases are named `PAYGATE_TEST_DB_PREFIX` (default
//! `paygate_t_`) and a random suffix, so a run can drop its own and only its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: failing loudly is the point

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paygate_common::config::{LogFormat, PartitionAssignment};
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
    let name = unique(&env("PAYGATE_TEST_DB_PREFIX", "paygate_t_"));
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
    settings.callback_dispatcher.request_timeout_ms = 2_000;
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

/// Sends `request` and reads its JSON answer, whatever the status.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
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

/// Starts the gateway simulator on port 0, answering after `answer_delay`; returns its
/// base URL.
pub async fn start_simulator(shutdown: CancellationToken, answer_delay: Duration) -> String {
    let simulator = paygate_gateway_sim::Simulator::build(paygate_gateway_sim::SimConfig {
        listen: "127.0.0.1:0".to_owned(),
        json_secret: SIM_JSON_SECRET.to_owned(),
        callback_delay: Duration::from_millis(50),
        slow_answer: Duration::from_secs(10),
        answer_delay,
    })
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{}", simulator.port());
    tokio::spawn(simulator.run(shutdown));
    url
}

/// Registers the simulator's JSON gateway as `simjson` and routes everything to it.
pub async fn route_everything_to_simulator(pool: &PgPool, simulator_url: &str) {
    paygate_api::demo::register_simulator(pool, simulator_url, SIM_JSON_SECRET, 2_000)
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

/// A broker of the test's own (tansu, durable `sqlite://` storage in a temporary
/// directory), so a test can kill it and bring it back on the same port and data.
/// The binary is `PAYGATE_TEST_TANSU`, by default where `scripts/test` installs it.
pub struct Broker {
    pub address: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl Broker {
    pub async fn start() -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(unique("paygate-broker-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Broker {
            address: format!("127.0.0.1:{port}"),
            port,
            dir,
            child: None,
        };
        broker.restart().await;
        broker
    }

    fn binary() -> String {
        std::env::var("PAYGATE_TEST_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.local/share/paygate/tansu-0.6.0/bin/tansu")
        })
    }

    /// SIGKILL: the broker stops mid-whatever, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts (again) on the same port and storage; returns once it accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let binary = Self::binary();
        let url = format!("tcp://{}", self.address);
        let child = tokio::process::Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting the broker {binary} (set PAYGATE_TEST_TANSU): {e}")
            });
        self.child = Some(child);
        eventually("the broker to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The services that talk over Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    PaymentProcessor,
    CallbackProcessor,
    CallbackDispatcher,
}

/// How to start a [`Suite`].
#[derive(Debug, Clone, Default)]
pub struct SuiteOptions {
    /// Services the test runs itself (as real processes, see [`Process`]) instead of
    /// the suite running them in-process.
    pub external: Vec<Service>,
    /// How long the simulated gateway takes to answer a payment it took.
    pub gateway_answer_delay: Duration,
    /// A broker of the test's own instead of the run's shared one.
    pub brokers: Option<String>,
}

/// The api and the Kafka services, the simulator and a merchant endpoint.
pub struct Suite {
    pub settings: Settings,
    pub pool: PgPool,
    pub api_url: String,
    pub simulator_url: String,
    pub merchant: paygate_api::merchants::NewMerchant,
    pub webhooks: WebhookReceiver,
    pub http: reqwest::Client,
    services: Vec<(&'static str, Running)>,
    simulator: CancellationToken,
}

impl Suite {
    /// Everything in this process.
    pub async fn start() -> Self {
        Self::start_with(SuiteOptions::default()).await
    }

    pub async fn start_with(options: SuiteOptions) -> Self {
        let mut settings = settings().await;
        if let Some(brokers) = options.brokers {
            settings.kafka.brokers = brokers;
        }
        let pool = pool(&settings).await;

        let api = paygate_api::Application::build(settings.clone())
            .await
            .unwrap();
        let api_url = format!("http://127.0.0.1:{}", api.port());
        settings.api.public_url = api_url.clone();
        let mut services = vec![("api", Running::spawn(|s| api.run(s)))];

        let simulator = CancellationToken::new();
        let simulator_url = start_simulator(simulator.clone(), options.gateway_answer_delay).await;
        route_everything_to_simulator(&pool, &simulator_url).await;
        let webhooks = WebhookReceiver::start().await;
        let merchant =
            paygate_api::merchants::create(&pool, "Test merchant", Some(&webhooks.url), None)
                .await
                .unwrap();

        let wanted = |service| !options.external.contains(&service);
        if wanted(Service::PaymentProcessor) {
            let app = paygate_payment_processor::Application::build(settings.clone())
                .await
                .unwrap();
            services.push(("payment-processor", Running::spawn(|s| app.run(s))));
        }
        if wanted(Service::CallbackProcessor) {
            let app = paygate_callback_processor::Application::build(settings.clone())
                .await
                .unwrap();
            services.push(("callback-processor", Running::spawn(|s| app.run(s))));
        }
        if wanted(Service::CallbackDispatcher) {
            let app = paygate_callback_dispatcher::Application::build(settings.clone())
                .await
                .unwrap();
            services.push(("callback-dispatcher", Running::spawn(|s| app.run(s))));
        }

        Suite {
            settings,
            pool,
            api_url,
            simulator_url,
            merchant,
            webhooks,
            http: reqwest::Client::new(),
            services,
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

    /// Sends a deposit of `amount` USD and returns its transaction id.
    pub async fn deposit(&self, amount: &str) -> String {
        let response = self
            .post("/v1/deposits")
            .json(&serde_json::json!({"user_id": "user-1", "amount": amount, "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: serde_json::Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// How many charges the simulated gateway made for `reference`.
    pub async fn charges(&self, reference: &str) -> u64 {
        let body = json_of(
            self.http
                .get(format!("{}/charges/{reference}", self.simulator_url)),
        )
        .await;
        body["charges"].as_u64().unwrap()
    }

    /// The transactions' statuses, by id.
    pub async fn statuses(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT id, status FROM transaction ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// The environment that points a service binary at this suite: the same database,
    /// broker, topics, consumer groups and Redis prefix, health on port 0.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let topics = &s.kafka.topics;
        [
            ("DATABASE__URL", s.database.url.expose_secret().to_owned()),
            ("REDIS__URL", s.redis.url.clone()),
            ("REDIS__KEY_PREFIX", s.redis.key_prefix.clone()),
            ("REDIS__LOCK_TTL_MS", s.redis.lock_ttl_ms.to_string()),
            ("KAFKA__BROKERS", s.kafka.brokers.clone()),
            ("KAFKA__PARTITIONS", s.kafka.partitions.to_string()),
            ("KAFKA__GROUP_PREFIX", s.kafka.group_prefix.clone()),
            ("KAFKA__PARTITION_ASSIGNMENT", "all".to_owned()),
            (
                "KAFKA__TOPICS__PAYMENTS_REQUESTED",
                topics.payments_requested.clone(),
            ),
            (
                "KAFKA__TOPICS__PAYMENTS_RETRY",
                topics.payments_retry.clone(),
            ),
            (
                "KAFKA__TOPICS__GATEWAY_CALLBACKS",
                topics.gateway_callbacks.clone(),
            ),
            (
                "KAFKA__TOPICS__TRANSACTIONS_STATUS",
                topics.transactions_status.clone(),
            ),
            (
                "OUTBOX__POLL_INTERVAL_MS",
                s.outbox.poll_interval_ms.to_string(),
            ),
            ("API__PUBLIC_URL", s.api.public_url.clone()),
            ("PAYMENT_PROCESSOR__LISTEN", "127.0.0.1:0".to_owned()),
            ("CALLBACK_PROCESSOR__LISTEN", "127.0.0.1:0".to_owned()),
            ("CALLBACK_DISPATCHER__LISTEN", "127.0.0.1:0".to_owned()),
            (
                "CALLBACK_DISPATCHER__POLL_INTERVAL_MS",
                s.callback_dispatcher.poll_interval_ms.to_string(),
            ),
            (
                "CALLBACK_DISPATCHER__RETRY_DELAYS_MS",
                s.callback_dispatcher
                    .retry_delays_ms
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (format!("PAYGATE__{name}"), value))
        .collect()
    }

    /// Stops every in-process service gracefully, asserting each one ended cleanly.
    pub async fn stop(self) {
        for (name, service) in self.services.into_iter().rev() {
            if let Err(error) = service.stop().await {
                panic!("{name} ended with an error: {error:#}");
            }
        }
        self.simulator.cancel();
        self.pool.close().await;
    }
}

/// A service binary running as a child process, so a test can SIGKILL it mid-flow.
pub struct Process {
    child: tokio::process::Child,
}

impl Process {
    /// Starts `binary` with `env` on top of this process's environment.
    pub fn spawn(binary: &str, env: &[(String, String)]) -> Self {
        let child = tokio::process::Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PAYGATE__LOG__FORMAT", "pretty")
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Process { child }
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed or committed.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits; `true` when it exited cleanly.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("still running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of SIGTERM")
            .unwrap();
        status.success()
    }
}
