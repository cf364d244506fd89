//! Kafka plumbing on rdkafka, one job a file: topic creation at start ([`admin`]), an
//! idempotent producer ([`producer`]), an at-least-once consumer loop that stores a
//! message's offset only after its handler succeeded ([`consumer`]), and handlers that
//! apply the messages in flight in batches, one database commit each ([`batch`]).

mod admin;
mod batch;
mod consumer;
mod producer;

pub use admin::{all_topics, ensure_topics};
pub use batch::{BatchHandler, Batched};
pub use consumer::{Assignment, ConsumerLoop, Handler, HandlerError, Inbound};
pub use producer::{await_delivery, is_timeout, Delivery, Envelope, Producer};

use rdkafka::config::ClientConfig;

use crate::config::KafkaSettings;

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
    /// Unix milliseconds before which the consumer does not hand the message to its
    /// handler (a scheduled retry).
    pub const NOT_BEFORE: &str = "not-before";
}

/// What every client of the brokers shares: where they are, and how to talk to them
/// (`kafka.security_protocol`: TLS with the brokers' names verified, SASL credentials).
pub(crate) fn base_config(settings: &KafkaSettings) -> ClientConfig {
    use secrecy::ExposeSecret as _;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("log_level", "4")
        .set("security.protocol", &settings.security_protocol);
    if settings.security_protocol.ends_with("ssl") {
        config.set("ssl.endpoint.identification.algorithm", "https");
        let tls = &settings.tls;
        for (key, path) in [
            ("ssl.ca.location", &tls.ca_file),
            ("ssl.certificate.location", &tls.client_cert_file),
            ("ssl.key.location", &tls.client_key_file),
        ] {
            if !path.is_empty() {
                config.set(key, path);
            }
        }
    }
    if settings.security_protocol.starts_with("sasl") {
        config
            .set("sasl.mechanism", &settings.sasl_mechanism)
            .set("sasl.username", &settings.sasl_username)
            .set("sasl.password", settings.sasl_password.expose_secret());
    }
    config
}
