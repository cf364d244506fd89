//! What more than one Paygate service shares, grouped by concern so the list reads as a
//! map:
//! - [`money`]: the domain and money — ids, amounts, statuses, event schemas, and the
//!   only ways a payment or a refund changes;
//! - [`store`]: storage and messaging — PostgreSQL, Kafka, the outbox, Redis locks;
//! - [`security`]: cards, secrets, signatures, egress, re-sealing, the environment;
//! - [`ops`]: operations — services and their supervision, metrics, health, telemetry,
//!   tracing, listeners, retries;
//! - [`gateway`]: the gateway adapters and their table;
//! - [`config`]: the settings.
//!
//! Each module is also at the crate's root (`paygate_common::outbox`, …), so a path
//! names what a thing is, not which group holds it. A service's own logic stays in its
//! own crate.

pub mod config;
pub mod gateway;
pub mod money;
pub mod ops;
pub mod security;
pub mod store;

pub use money::{domain, events, metadata, refunds, transactions};
pub use ops::{
    health, http_server, init, metrics, retry, service, shutdown, supervisor, telemetry, trace,
};
pub use security::{cards, egress, environment, reseal, secrets, signature};
pub use store::{backlog, batch, db, group_commit, kafka, lock, outbox, redis_connection};

pub use config::Settings;
