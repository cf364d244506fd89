//! Layered configuration: the embedded defaults (`common/config/default.toml`), then an
//! optional file named by `PAYGATE_CONFIG`, then `PAYGATE__…` environment variables.
//! One [`Settings`] describes the whole suite; each service reads the sections it needs.
//! Settings are validated once at start, so a typo stops a service before it serves.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use secrecy::SecretString;
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Production unless set otherwise; see [`crate::environment`].
    pub environment: Environment,
    pub log: LogSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub kafka: KafkaSettings,
    pub outbox: OutboxSettings,
    pub api: ApiSettings,
    pub admin: AdminSettings,
    pub cards: CardSettings,
    pub secrets: SecretSettings,
    pub payment_processor: PaymentProcessorSettings,
    pub callback_processor: ServiceSettings,
    pub callback_dispatcher: DispatcherSettings,
    pub tls: TlsSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
}

/// The bounds of every listener (see [`crate::http_server`]).
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// A request's head must arrive within this; an idle keep-alive connection closes after it.
    pub header_read_timeout_ms: u64,
    /// Connections each listener holds open at once.
    pub max_connections: usize,
}

/// PEM files for a TLS client: whom to trust, and who we are when asked.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsFiles {
    /// The CA that issued the server's certificate; empty: the usual roots.
    pub ca_file: String,
    /// A client certificate and its key, for servers that ask for one; empty: none.
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl TlsFiles {
    fn validate(&self, section: &str) -> anyhow::Result<()> {
        ensure!(
            self.client_cert_file.is_empty() == self.client_key_file.is_empty(),
            "{section}.client_cert_file and client_key_file go together"
        );
        Ok(())
    }
}

/// TLS to PostgreSQL: the mode (libpq's `sslmode` names) and the files.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseTls {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; empty: the URL's.
    pub mode: String,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl DatabaseTls {
    /// Its files, as every TLS client takes them.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }
}

/// Where a service runs: outside development it refuses development secrets and
/// permissive egress (see [`crate::environment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Production,
    Development,
}

/// How a service stops.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long the service may drain (finish messages and requests in
    /// flight, commit, flush) before it gives up waiting and exits with an error.
    pub grace_period_ms: u64,
}

impl ShutdownSettings {
    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
}

/// Outgoing TLS (see [`crate::egress`]).
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSettings {
    /// A PEM file of extra trusted roots; empty: none.
    pub extra_root_certificates: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Where spans are exported over OTLP/HTTP (`http://collector:4318/v1/traces`);
    /// empty: no export. Needs a build with the `paygate-common/otlp` feature.
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Holds the password when there is one, so it is never printed.
    pub url: SecretString,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    /// A statement running longer is cancelled by PostgreSQL.
    pub statement_timeout_ms: u64,
    /// A session idle inside a transaction longer than this is ended by PostgreSQL, so a
    /// stuck holder never keeps its row locks.
    pub idle_in_transaction_timeout_ms: u64,
    pub tls: DatabaseTls,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// Holds the password when there is one, so it is never printed.
    pub url: SecretString,
    pub key_prefix: String,
    pub lock_ttl_ms: u64,
    /// Connecting and every command give up after this long.
    pub command_timeout_ms: u64,
    /// With a `rediss://` URL: whom to trust and the client certificate.
    pub tls: TlsFiles,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    pub brokers: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub fetch_wait_max_ms: u32,
    pub message_timeout_ms: u32,
    /// How often librdkafka reports statistics (the consumer-lag gauge); 0 turns off.
    pub statistics_interval_ms: u32,
    pub group_prefix: String,
    pub handler_attempts: u32,
    pub max_in_flight: usize,
    pub partition_assignment: PartitionAssignment,
    /// librdkafka's `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: String,
    /// With SASL: the mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and credentials.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: SecretString,
    /// With SSL: whom to trust and the client certificate.
    pub tls: TlsFiles,
    pub topics: Topics,
}

/// How a service's consumer gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionAssignment {
    /// Kafka's group protocol: replicas share the partitions and a dead one's are handed
    /// to the others. For Apache Kafka (compose, Kubernetes).
    Group,
    /// This process reads every partition and commits to its group without joining it:
    /// for exactly one replica per service. Used with tansu, whose group coordinator never
    /// expires a member killed with SIGKILL, so its partitions would stall until restart
    /// and, as measured, even after it.
    All,
}

/// Topic names: configuration, so that deployments (and tests) can keep theirs apart.
#[derive(Debug, Clone, Deserialize)]
pub struct Topics {
    pub payments_requested: String,
    pub payments_retry: String,
    pub gateway_callbacks: String,
    pub transactions_status: String,
    /// Commands to the payment-processor's settlement runner: run a gateway's period.
    pub settlement_commands: String,
}

impl Topics {
    pub fn all(&self) -> [&str; 5] {
        [
            &self.payments_requested,
            &self.payments_retry,
            &self.gateway_callbacks,
            &self.transactions_status,
            &self.settlement_commands,
        ]
    }

    /// The dead-letter topic of a topic: where a consumer puts what it gave up on.
    pub fn dead_letter(topic: &str) -> String {
        format!("{topic}.dlq")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    pub poll_interval_ms: u64,
    pub batch_size: i64,
    /// How long a relay owns the rows it claimed; a relay that dies holding them delays
    /// them this long. Longer than `kafka.message_timeout_ms`, so a live relay's claim
    /// never runs out while it still waits for the broker.
    pub lease_ms: u64,
    /// Produce attempts a row gets while the broker says its topic does not exist,
    /// before it is set aside (other refusals that can never succeed set it aside at once).
    pub unknown_topic_attempts: i32,
    /// How long a relay waits after its process committed events before it claims, so
    /// the commits of that moment share one claim instead of one claim each.
    pub linger_ms: u64,
}

impl OutboxSettings {
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen: String,
    /// Where the api's `/metrics` is served (a port of its own, for the scraper only).
    pub metrics_listen: String,
    pub public_url: String,
    pub max_body_bytes: usize,
    pub rate_limit: RateLimitSettings,
    /// How long a checked API key is trusted without asking PostgreSQL again. A key
    /// that is revoked or set to expire is dropped at once (NOTIFY); this bounds how
    /// long a key stays trusted if that notification cannot arrive.
    pub key_cache_ttl_ms: u64,
    /// A request not answered within this is answered 503 `request_timeout` (its work is
    /// dropped: an open database transaction rolls back).
    pub request_timeout_ms: u64,
    /// A request body must arrive whole within this (and within the request's deadline).
    pub body_read_timeout_ms: u64,
    /// How long an API key PostgreSQL did not know is refused without asking again.
    pub unknown_key_cache_ttl_ms: u64,
    /// Requests that need PostgreSQL before they are authenticated, per client address.
    pub unauthenticated: RateLimitSettings,
    pub idempotency: IdempotencySettings,
    pub purge: PurgeSettings,
}

/// How `Idempotency-Key` requests are recognised and how long they are remembered.
#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    /// `"<id>:<base64 of 32 bytes>"`, newest first: HMAC keys of request fingerprints;
    /// the first fingerprints, all recognise.
    pub fingerprint_keys: Vec<SecretString>,
    /// A key and its answer are kept this long.
    pub retention_ms: u64,
}

impl IdempotencySettings {
    pub fn retention(&self) -> Duration {
        Duration::from_millis(self.retention_ms)
    }
}

/// The api's background purge of what is no longer needed.
#[derive(Debug, Clone, Deserialize)]
pub struct PurgeSettings {
    pub interval_ms: u64,
}

/// Requests per merchant per window, shared by every api replica.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub requests: u64,
    pub window_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSettings {
    /// Address of the health endpoint.
    pub listen: String,
    /// Address of `/metrics`.
    pub metrics_listen: String,
}

/// The admin API.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// The bearer token of the admin API; empty turns the admin API off (every call 401).
    pub token: SecretString,
    /// How long a merchant's old API keys keep working after a rotation.
    pub key_rotation_overlap_ms: u64,
    /// A separate listener for the admin API and the console; empty: the api's own.
    pub listen: String,
    /// Console sign-in attempts per client address per window.
    pub sign_in_attempts: u64,
    pub sign_in_window_ms: u64,
}

/// The card key ring: card numbers and CVVs are sealed with these keys (see
/// [`crate::cards`]).
#[derive(Debug, Clone, Deserialize)]
pub struct CardSettings {
    /// `"<id>:<base64 of 32 bytes>"`, newest first: the first seals, all open.
    pub keys: Vec<SecretString>,
    /// How long a card's CVV waits, sealed in Redis, for the acquirer to be asked.
    pub cvv_ttl_ms: u64,
    /// A final payment's sealed card is cleared this long after it became final.
    pub clear_after_final_ms: u64,
}

impl CardSettings {
    pub fn cvv_ttl(&self) -> Duration {
        Duration::from_millis(self.cvv_ttl_ms)
    }

    /// The card key ring.
    pub fn key_ring(&self) -> anyhow::Result<crate::cards::KeyRing> {
        crate::cards::KeyRing::from_config(&self.keys).context("cards.keys")
    }
}

/// The secrets key ring: webhook secrets, signing keys and gateways' callback secrets
/// are sealed with these keys (see [`crate::secrets`]).
#[derive(Debug, Clone, Deserialize)]
pub struct SecretSettings {
    /// `"<id>:<base64 of 32 bytes>"`, newest first: the first seals, all open.
    pub keys: Vec<SecretString>,
}

impl SecretSettings {
    /// The secrets key ring.
    pub fn key_ring(&self) -> anyhow::Result<crate::cards::KeyRing> {
        crate::cards::KeyRing::from_config(&self.keys).context("secrets.keys")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentProcessorSettings {
    /// Address of the health endpoint.
    pub listen: String,
    /// Address of `/metrics`.
    pub metrics_listen: String,
    /// Retries through the retry topic: exponential backoff with full jitter.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Attempts in all (the first included) before a payment whose gateways are all
    /// down fails, or one whose gateway never answered is left unresolved.
    pub retry_attempts: u32,
    /// How often payments left unresolved at a gateway are asked about again (and
    /// overdue callbacks and stale payments looked for).
    pub reconcile_interval_ms: u64,
    /// A pending payment with no progress for this long, whatever its flags, is taken
    /// up again by the sweeper, and listed for a human if that does not settle it.
    pub stale_pending_ms: u64,
    /// Gateways and routes are cached; reloaded on change (NOTIFY) and at least this often.
    pub route_refresh_ms: u64,
    pub breaker: BreakerSettings,
    /// Reconciliation against the gateways' settlement reports.
    pub settlement: SettlementSettings,
    /// Where gateways may be reached (as [`DispatcherSettings::egress_policy`]).
    pub allow_http: bool,
    pub allow_loopback: bool,
    pub allow_private: bool,
}

impl PaymentProcessorSettings {
    /// Where gateways may be reached.
    pub fn egress_policy(&self) -> crate::egress::Policy {
        crate::egress::Policy {
            allow_http: self.allow_http,
            allow_loopback: self.allow_loopback,
            allow_private: self.allow_private,
        }
    }

    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms)
    }

    pub fn retry_cap(&self) -> Duration {
        Duration::from_millis(self.retry_cap_ms)
    }

    pub fn stale_pending(&self) -> Duration {
        Duration::from_millis(self.stale_pending_ms)
    }
}

/// Reconciliation against the gateways' settlement reports (the payment-processor's
/// `settlement` module).
#[derive(Debug, Clone, Deserialize)]
pub struct SettlementSettings {
    /// Whether this replica runs reconciliations at all (it still records requests
    /// from the command topic for the replicas that do).
    pub enabled: bool,
    /// Whether each enabled gateway's last finished period is run by itself.
    pub scheduled: bool,
    /// The scheduled period's length: a day by default. Periods are aligned to the
    /// epoch (to UTC midnight for a day); a period is run once `delay_ms` after it ends.
    pub period_ms: u64,
    /// How long after a period ends its report is asked for (gateways publish late).
    pub delay_ms: u64,
    /// How often the runner looks for runs to start or to take up again.
    pub poll_interval_ms: u64,
    /// How long a replica holds a run it works on before another may take it up.
    pub lease_ms: u64,
    /// Report references matched per committed batch.
    pub batch_size: i64,
    /// Fetches of a report before its run is failed.
    pub fetch_attempts: u32,
    /// The wait before the second fetch, doubled for each one after.
    pub fetch_backoff_ms: u64,
}

impl SettlementSettings {
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms.max(1))
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.max(1_000))
    }

    pub fn fetch_backoff(&self) -> Duration {
        Duration::from_millis(self.fetch_backoff_ms)
    }
}

/// A circuit breaker per gateway.
#[derive(Debug, Clone, Deserialize)]
pub struct BreakerSettings {
    /// Calls are judged over this rolling window.
    pub window_ms: u64,
    /// Fewer calls than this in the window never open the circuit.
    pub min_calls: u32,
    /// The share of failed calls (0..1) that opens it.
    pub failure_rate: f64,
    /// How long it stays open before one trial call is let through (half-open).
    pub open_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DispatcherSettings {
    pub listen: String,
    pub metrics_listen: String,
    pub request_timeout_ms: u64,
    pub retry_delays_ms: Vec<u64>,
    pub poll_interval_ms: u64,
    /// How long the sender waits, once woken, before it claims (see default.toml).
    pub claim_linger_ms: u64,
    pub max_in_flight: usize,
    pub endpoint_concurrency: usize,
    pub disable_after_ms: u64,
    pub probe_interval_ms: u64,
    pub secret_rotation_overlap_ms: u64,
    pub allow_http: bool,
    pub allow_loopback: bool,
    pub allow_private: bool,
}

impl DispatcherSettings {
    /// Where webhooks may go.
    pub fn egress_policy(&self) -> crate::egress::Policy {
        crate::egress::Policy {
            allow_http: self.allow_http,
            allow_loopback: self.allow_loopback,
            allow_private: self.allow_private,
        }
    }

    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_ms
            .iter()
            .copied()
            .map(Duration::from_millis)
            .collect()
    }
}

/// Settings given as comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "callback_dispatcher.retry_delays_ms",
    "cards.keys",
    "secrets.keys",
    "api.idempotency.fingerprint_keys",
];

/// `PAYGATE__<PATH>_FILE=/path` among `vars`: the setting `<path>` read from that file,
/// as Kubernetes Secrets and Vault Agent mount secrets (its content, the trailing
/// newline trimmed). Read at start; it overrides the same setting given directly.
fn secret_files(
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<Vec<(String, String)>> {
    vars.filter_map(|(name, path)| {
        let key = name.strip_prefix("PAYGATE__")?.strip_suffix("_FILE")?;
        Some((key.to_lowercase().replace("__", "."), path))
    })
    .map(|(key, path)| {
        let value = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the setting {key} from {path}"))?;
        Ok((key, value.trim_end_matches(['\n', '\r']).to_owned()))
    })
    .collect()
}

impl Settings {
    /// Defaults, then `PAYGATE_CONFIG` (if set), then `PAYGATE__…` variables, then
    /// `PAYGATE__…_FILE` files; validated.
    pub fn load() -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Ok(path) = std::env::var("PAYGATE_CONFIG") {
            builder = builder.add_source(config::File::with_name(&path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PAYGATE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("callback_dispatcher.retry_delays_ms")
                .with_list_parse_key("cards.keys")
                .with_list_parse_key("secrets.keys")
                .with_list_parse_key("api.idempotency.fingerprint_keys")
                .try_parsing(true),
        );
        for (key, value) in secret_files(std::env::vars())? {
            builder = if LIST_KEYS.contains(&key.as_str()) {
                let items: Vec<String> = value.split(',').map(|v| v.trim().to_owned()).collect();
                builder.set_override(key, items)?
            } else {
                builder.set_override(key, value)?
            };
        }
        let settings: Settings = builder
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("configuration does not fit Paygate's settings")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: addresses parse, numbers are in range.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, addr) in [
            ("api.listen", &self.api.listen),
            ("api.metrics_listen", &self.api.metrics_listen),
            ("payment_processor.listen", &self.payment_processor.listen),
            (
                "payment_processor.metrics_listen",
                &self.payment_processor.metrics_listen,
            ),
            ("callback_processor.listen", &self.callback_processor.listen),
            (
                "callback_processor.metrics_listen",
                &self.callback_processor.metrics_listen,
            ),
            (
                "callback_dispatcher.listen",
                &self.callback_dispatcher.listen,
            ),
            (
                "callback_dispatcher.metrics_listen",
                &self.callback_dispatcher.metrics_listen,
            ),
        ]
        .into_iter()
        .chain((!self.admin.listen.is_empty()).then_some(("admin.listen", &self.admin.listen)))
        {
            addr.parse::<SocketAddr>().with_context(|| {
                format!("{name} = {addr:?} is not an address such as 127.0.0.1:8080")
            })?;
        }
        ensure!(
            self.api.public_url.starts_with("http://")
                || self.api.public_url.starts_with("https://"),
            "api.public_url must be an http(s) URL"
        );
        ensure!(
            self.database.max_connections > 0,
            "database.max_connections must be positive"
        );
        ensure!(
            !self.kafka.brokers.is_empty(),
            "kafka.brokers must name at least one broker"
        );
        ensure!(
            self.kafka.partitions > 0,
            "kafka.partitions must be positive"
        );
        ensure!(
            self.kafka.handler_attempts > 0,
            "kafka.handler_attempts must be positive"
        );
        ensure!(
            self.outbox.batch_size > 0,
            "outbox.batch_size must be positive"
        );
        ensure!(
            self.outbox.lease_ms > u64::from(self.kafka.message_timeout_ms),
            "outbox.lease_ms must be longer than kafka.message_timeout_ms"
        );
        ensure!(
            self.outbox.unknown_topic_attempts > 0,
            "outbox.unknown_topic_attempts must be positive"
        );
        ensure!(
            self.redis.lock_ttl_ms >= 1000,
            "redis.lock_ttl_ms must be at least 1000"
        );
        ensure!(
            !self.callback_dispatcher.retry_delays_ms.is_empty(),
            "callback_dispatcher.retry_delays_ms needs at least one delay"
        );
        let processor = &self.payment_processor;
        ensure!(
            processor.retry_attempts > 0,
            "payment_processor.retry_attempts must be positive"
        );
        ensure!(
            processor.retry_base_ms > 0 && processor.retry_cap_ms >= processor.retry_base_ms,
            "payment_processor.retry_base_ms must be positive and at most retry_cap_ms"
        );
        ensure!(
            (0.0..=1.0).contains(&processor.breaker.failure_rate),
            "payment_processor.breaker.failure_rate must be between 0 and 1"
        );
        let dispatcher = &self.callback_dispatcher;
        ensure!(
            dispatcher.max_in_flight > 0 && dispatcher.endpoint_concurrency > 0,
            "callback_dispatcher.max_in_flight and endpoint_concurrency must be positive"
        );
        ensure!(
            dispatcher.probe_interval_ms > 0,
            "callback_dispatcher.probe_interval_ms must be positive"
        );
        ensure!(
            self.http.header_read_timeout_ms > 0 && self.http.max_connections > 0,
            "http.header_read_timeout_ms and http.max_connections must be positive"
        );
        ensure!(
            self.api.body_read_timeout_ms > 0
                && self.api.body_read_timeout_ms <= self.api.request_timeout_ms,
            "api.body_read_timeout_ms must be positive and at most api.request_timeout_ms"
        );
        ensure!(
            self.api.unauthenticated.requests > 0 && self.admin.sign_in_attempts > 0,
            "api.unauthenticated.requests and admin.sign_in_attempts must be positive"
        );
        ensure!(
            [
                "",
                "disable",
                "prefer",
                "require",
                "verify-ca",
                "verify-full"
            ]
            .contains(&self.database.tls.mode.as_str()),
            "database.tls.mode must be disable, prefer, require, verify-ca or verify-full"
        );
        ensure!(
            ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                .contains(&self.kafka.security_protocol.as_str()),
            "kafka.security_protocol must be plaintext, ssl, sasl_plaintext or sasl_ssl"
        );
        if self.kafka.security_protocol.starts_with("sasl") {
            ensure!(
                ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                    .contains(&self.kafka.sasl_mechanism.as_str())
                    && !self.kafka.sasl_username.is_empty(),
                "kafka.security_protocol = {} needs kafka.sasl_mechanism (PLAIN, SCRAM-SHA-256 \
                 or SCRAM-SHA-512) and kafka.sasl_username",
                self.kafka.security_protocol
            );
        }
        self.database.tls.files().validate("database.tls")?;
        self.redis.tls.validate("redis.tls")?;
        self.kafka.tls.validate("kafka.tls")?;
        ensure!(
            self.api.purge.interval_ms > 0,
            "api.purge.interval_ms must be positive"
        );
        self.cards.key_ring()?;
        self.secrets.key_ring()?;
        crate::environment::fingerprint_keys(&self.api.idempotency.fingerprint_keys)
            .context("api.idempotency.fingerprint_keys")?;
        Ok(())
    }

    /// The consumer group of a service.
    pub fn group_id(&self, service: &str) -> String {
        format!("{}.{service}", self.kafka.group_prefix)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The embedded defaults, as a service reads them with nothing set.
    pub(crate) fn defaults() -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_embedded_defaults_are_valid() {
        let settings = defaults();
        settings.validate().unwrap();
        assert_eq!(settings.environment, Environment::Production);
        assert_eq!(
            settings.kafka.topics.payments_requested,
            "paygate.payments.requested"
        );
        assert_eq!(settings.callback_dispatcher.retry_delays_ms.len(), 7);
    }

    #[test]
    fn a_setting_named_with_file_is_read_from_that_file_and_a_missing_file_stops_the_start() {
        let dir = std::env::temp_dir().join(format!("paygate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("admin-token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let vars = vec![
            (
                "PAYGATE__ADMIN__TOKEN_FILE".to_owned(),
                token.display().to_string(),
            ),
            (
                "PAYGATE__ADMIN__TOKEN".to_owned(),
                "ignored-here".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        assert_eq!(
            secret_files(vars.into_iter()).unwrap(),
            [("admin.token".to_owned(), "s3cret".to_owned())]
        );
        let missing = vec![(
            "PAYGATE__DATABASE__URL_FILE".to_owned(),
            dir.join("nope").display().to_string(),
        )];
        let error = secret_files(missing.into_iter()).unwrap_err();
        assert!(format!("{error:#}").contains("database.url"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
