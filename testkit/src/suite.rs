//! The whole suite for one test: the api and the Kafka services in-process (or some
//! of them as real processes), the simulator and a merchant endpoint.

use std::time::Duration;

use axum::http::StatusCode;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paygate_common::Settings;

use crate::{
    json_of, pool, route_everything_to_simulator, settings, start_simulator, WebhookReceiver,
};

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

/// The services a suite runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// As an external process it listens on a free port chosen up front: [`Suite::env`]
    /// gives it as `api.listen`, and `api_url` points there.
    Api,
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
    /// Changes the test's settings before anything starts.
    pub tweak: Option<fn(&mut Settings)>,
    /// A Redis of the test's own (`redis://…`) instead of the run's shared one.
    pub redis: Option<String>,
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
    /// `http://127.0.0.1:<port>` of each in-process service's HTTP endpoint (the api's,
    /// the consumers' health and metrics ports), by name.
    pub endpoints: Vec<(&'static str, String)>,
    /// `http://127.0.0.1:<port>` of each in-process service's `/metrics` port, by name.
    pub metrics_endpoints: Vec<(&'static str, String)>,
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
        if let Some(redis) = options.redis {
            settings.redis.url = redis.into();
        }
        if let Some(tweak) = options.tweak {
            tweak(&mut settings);
        }
        let pool = pool(&settings).await;
        let wanted = |service| !options.external.contains(&service);
        let url = |port: u16| format!("http://127.0.0.1:{port}");

        let mut services = Vec::new();
        let mut endpoints = Vec::new();
        let mut metrics_endpoints = Vec::new();
        let api_url = if wanted(Service::Api) {
            let api = paygate_api::Application::build(settings.clone())
                .await
                .unwrap();
            let api_url = url(api.port());
            metrics_endpoints.push(("api", url(api.metrics_port())));
            services.push(("api", Running::spawn(|s| api.run(s))));
            api_url
        } else {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            settings.api.listen = free.local_addr().unwrap().to_string();
            format!("http://{}", settings.api.listen)
        };
        endpoints.push(("api", api_url.clone()));
        settings.api.public_url = api_url.clone();

        let simulator = CancellationToken::new();
        let simulator_url = start_simulator(simulator.clone(), options.gateway_answer_delay).await;
        route_everything_to_simulator(&pool, &simulator_url).await;
        let webhooks = WebhookReceiver::start().await;
        let merchant = paygate_api::merchants::create(
            &pool,
            &crate::keys(),
            "Test merchant",
            Some(&webhooks.url),
            None,
        )
        .await
        .unwrap();

        if wanted(Service::PaymentProcessor) {
            let app = paygate_payment_processor::Application::build(settings.clone())
                .await
                .unwrap();
            endpoints.push(("payment-processor", url(app.port())));
            metrics_endpoints.push(("payment-processor", url(app.metrics_port())));
            services.push(("payment-processor", Running::spawn(|s| app.run(s))));
        }
        if wanted(Service::CallbackProcessor) {
            let app = paygate_callback_processor::Application::build(settings.clone())
                .await
                .unwrap();
            endpoints.push(("callback-processor", url(app.port())));
            metrics_endpoints.push(("callback-processor", url(app.metrics_port())));
            services.push(("callback-processor", Running::spawn(|s| app.run(s))));
        }
        if wanted(Service::CallbackDispatcher) {
            let app = paygate_callback_dispatcher::Application::build(settings.clone())
                .await
                .unwrap();
            endpoints.push(("callback-dispatcher", url(app.port())));
            metrics_endpoints.push(("callback-dispatcher", url(app.metrics_port())));
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
            endpoints,
            metrics_endpoints,
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
        self.deposit_with(
            &serde_json::json!({"user_id": "user-1", "amount": amount, "currency": "USD"}),
        )
        .await
    }

    /// Sends the deposit `body`, asserts it is accepted and returns its transaction id.
    pub async fn deposit_with(&self, body: &serde_json::Value) -> String {
        let response = self.post("/v1/deposits").json(body).send().await.unwrap();
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
        service_env(&self.settings)
    }

    /// The URL of the in-process service `name`'s HTTP endpoint.
    pub fn endpoint(&self, name: &str) -> &str {
        self.endpoints
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, url)| url.as_str())
            .unwrap_or_else(|| panic!("{name} does not run in this process"))
    }

    /// The URL of the in-process service `name`'s metrics port.
    pub fn metrics_endpoint(&self, name: &str) -> &str {
        self.metrics_endpoints
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, url)| url.as_str())
            .unwrap_or_else(|| panic!("{name} does not run in this process"))
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

/// The gateway codes a transaction's history says were about to be asked, in order.
pub async fn attempted_gateways(pool: &PgPool, id: &str) -> Vec<String> {
    use prost::Message as _;
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM transaction_event
          WHERE transaction_id = $1 AND event_type = $2 ORDER BY seq",
    )
    .bind(id)
    .bind(paygate_common::events::event_type::GATEWAY_ATTEMPTED)
    .fetch_all(pool)
    .await
    .unwrap();
    payloads
        .iter()
        .map(|p| {
            paygate_common::events::proto::StatusChanged::decode(p.as_slice())
                .unwrap()
                .transaction
                .and_then(|t| t.gateway)
                .unwrap_or_default()
        })
        .collect()
}

/// The environment that points a service binary at `s`: the same database, broker,
/// topics, consumer groups and Redis prefix, health on port 0.
pub fn service_env(s: &Settings) -> Vec<(String, String)> {
    let topics = &s.kafka.topics;
    [
        ("ENVIRONMENT", "development".to_owned()),
        ("DATABASE__URL", s.database.url.expose_secret().to_owned()),
        ("REDIS__URL", s.redis.url.expose_secret().to_owned()),
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
            "KAFKA__TOPICS__SETTLEMENT_COMMANDS",
            topics.settlement_commands.clone(),
        ),
        (
            "KAFKA__TOPICS__TRANSACTIONS_STATUS",
            topics.transactions_status.clone(),
        ),
        (
            "OUTBOX__POLL_INTERVAL_MS",
            s.outbox.poll_interval_ms.to_string(),
        ),
        ("OUTBOX__LEASE_MS", s.outbox.lease_ms.to_string()),
        (
            "PAYMENT_PROCESSOR__SETTLEMENT__SCHEDULED",
            s.payment_processor.settlement.scheduled.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__SETTLEMENT__POLL_INTERVAL_MS",
            s.payment_processor.settlement.poll_interval_ms.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__SETTLEMENT__LEASE_MS",
            s.payment_processor.settlement.lease_ms.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__SETTLEMENT__FETCH_BACKOFF_MS",
            s.payment_processor.settlement.fetch_backoff_ms.to_string(),
        ),
        (
            "KAFKA__MESSAGE_TIMEOUT_MS",
            s.kafka.message_timeout_ms.to_string(),
        ),
        (
            "KAFKA__HANDLER_ATTEMPTS",
            s.kafka.handler_attempts.to_string(),
        ),
        ("API__PUBLIC_URL", s.api.public_url.clone()),
        ("API__LISTEN", s.api.listen.clone()),
        // Metrics ports on 0: several stacks (and several runs) share this machine.
        ("API__METRICS_LISTEN", "127.0.0.1:0".to_owned()),
        (
            "PAYMENT_PROCESSOR__METRICS_LISTEN",
            "127.0.0.1:0".to_owned(),
        ),
        (
            "CALLBACK_PROCESSOR__METRICS_LISTEN",
            "127.0.0.1:0".to_owned(),
        ),
        (
            "CALLBACK_DISPATCHER__METRICS_LISTEN",
            "127.0.0.1:0".to_owned(),
        ),
        ("ADMIN__TOKEN", s.admin.token.expose_secret().to_owned()),
        (
            "KAFKA__STATISTICS_INTERVAL_MS",
            s.kafka.statistics_interval_ms.to_string(),
        ),
        (
            "SHUTDOWN__GRACE_PERIOD_MS",
            s.shutdown.grace_period_ms.to_string(),
        ),
        ("PAYMENT_PROCESSOR__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "PAYMENT_PROCESSOR__RETRY_BASE_MS",
            s.payment_processor.retry_base_ms.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__RETRY_CAP_MS",
            s.payment_processor.retry_cap_ms.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__RETRY_ATTEMPTS",
            s.payment_processor.retry_attempts.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__RECONCILE_INTERVAL_MS",
            s.payment_processor.reconcile_interval_ms.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__STALE_PENDING_MS",
            s.payment_processor.stale_pending_ms.to_string(),
        ),
        (
            "PAYMENT_PROCESSOR__ROUTE_REFRESH_MS",
            s.payment_processor.route_refresh_ms.to_string(),
        ),
        ("CALLBACK_PROCESSOR__LISTEN", "127.0.0.1:0".to_owned()),
        ("CALLBACK_DISPATCHER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "CALLBACK_DISPATCHER__REQUEST_TIMEOUT_MS",
            s.callback_dispatcher.request_timeout_ms.to_string(),
        ),
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

/// A plain USD deposit of `amount` by `merchant`'s user `user_id` (no country, card,
/// reference or metadata), for tests that write payments straight to the database.
pub fn plain_deposit(
    merchant: &paygate_common::domain::MerchantId,
    amount: &str,
    user_id: &str,
) -> paygate_common::transactions::NewTransaction {
    use paygate_common::domain::{Currency, Kind, Money};
    paygate_common::transactions::NewTransaction {
        merchant_id: merchant.clone(),
        kind: Kind::Deposit,
        money: Money::parse(amount, "USD".parse::<Currency>().expect("USD")).expect("an amount"),
        user_id: user_id.to_owned(),
        country: None,
        reference: None,
        card: None,
        metadata: Default::default(),
    }
}
