//! The whole of Paygate as it runs in production, for one test: the four service
//! binaries under a supervisor, and a PostgreSQL, broker and Redis of the test's own,
//! so the test may crash any of them. The gateway simulator and the merchant's webhook
//! endpoint (the third parties) run in the test.

use std::time::Duration;

use paygate_api::merchants::NewMerchant;
use paygate_common::Settings;
use paygate_testkit::{
    eventually, route_everything_to_simulator, service_env, settings_on, start_simulator, Broker,
    PrivatePostgres, PrivateRedis, Supervised, WebhookReceiver,
};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The services, and the binaries they are.
pub(crate) const SERVICES: [(&str, &str); 4] = [
    ("api", "paygate-api"),
    ("payment-processor", "paygate-payment-processor"),
    ("callback-processor", "paygate-callback-processor"),
    ("callback-dispatcher", "paygate-callback-dispatcher"),
];

/// The PostgreSQL role a service connects as.
pub(crate) fn role(service: &str) -> String {
    format!("paygate_{}", service.replace('-', "_"))
}

pub(crate) struct Stack {
    pub(crate) postgres: PrivatePostgres,
    pub(crate) broker: Broker,
    pub(crate) redis: PrivateRedis,
    pub(crate) settings: Settings,
    pub(crate) pool: PgPool,
    /// Stops the simulator.
    pub(crate) stop: CancellationToken,
    pub(crate) simulator: String,
    pub(crate) webhooks: WebhookReceiver,
    pub(crate) merchant: NewMerchant,
    /// The api's base URL (a fixed port, so it is the same after every restart).
    pub(crate) api: String,
    /// In the order of [`SERVICES`].
    pub(crate) services: Vec<Supervised>,
    pub(crate) http: reqwest::Client,
}

impl Stack {
    /// Starts it all, PostgreSQL with `postgres_settings`; `env` may change each
    /// service's environment (given the service's name) before it starts.
    pub(crate) async fn start(
        postgres_settings: &[&str],
        env: impl Fn(&str, Vec<(String, String)>) -> Vec<(String, String)>,
    ) -> Self {
        let postgres = PrivatePostgres::start_with(postgres_settings).await;
        let broker = Broker::start().await;
        let redis = PrivateRedis::start().await;
        let mut settings = settings_on(&postgres.admin_url).await;
        settings.kafka.brokers = broker.address.clone();
        settings.redis.url = secrecy::SecretString::from(redis.url.clone());
        let api_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = format!("http://127.0.0.1:{api_port}");
        settings.api.public_url = api.clone();
        let pool = paygate_testkit::pool(&settings).await;

        let stop = CancellationToken::new();
        let simulator = start_simulator(stop.clone(), Duration::from_millis(20)).await;
        route_everything_to_simulator(&pool, &simulator).await;
        let webhooks = WebhookReceiver::start().await;
        let merchant = paygate_api::merchants::create(
            &pool,
            &paygate_testkit::keys(),
            "Chaos merchant",
            Some(&webhooks.url),
            None,
        )
        .await
        .unwrap();

        // Each service connects as a role of its own, so what PostgreSQL sees (sessions,
        // pg_stat_statements) is told apart by service.
        let database_url = settings.database.url.expose_secret().to_owned();
        for (name, _) in SERVICES {
            sqlx::query(&format!("CREATE ROLE {} LOGIN SUPERUSER", role(name)))
                .execute(&pool)
                .await
                .unwrap();
        }
        let mut common = service_env(&settings);
        common.push((
            "PAYGATE__API__LISTEN".to_owned(),
            format!("127.0.0.1:{api_port}"),
        ));
        common.push(("RUST_LOG".to_owned(), "error".to_owned()));
        let services: Vec<Supervised> = SERVICES
            .iter()
            .map(|(name, binary)| {
                let mut own = common.clone();
                own.push((
                    "PAYGATE__DATABASE__URL".to_owned(),
                    database_url.replacen(
                        "postgres://postgres@",
                        &format!("postgres://{}@", role(name)),
                        1,
                    ),
                ));
                Supervised::start(name, &paygate_testkit::binary(binary), env(name, own))
            })
            .collect();
        let http = reqwest::Client::new();
        eventually("the api to answer", Duration::from_secs(60), || async {
            let alive = http.get(format!("{api}/healthz")).send().await;
            alive.is_ok_and(|a| a.status().is_success()).then_some(())
        })
        .await;
        Stack {
            postgres,
            broker,
            redis,
            settings,
            pool,
            stop,
            simulator,
            webhooks,
            merchant,
            api,
            services,
            http,
        }
    }
}
