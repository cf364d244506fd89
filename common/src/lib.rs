//! What more than one Paygate service shares: domain types, event schemas, Kafka,
//! PostgreSQL and Redis plumbing, gateway adapters, signatures, configuration,
//! telemetry and shutdown. A service's own logic stays in its own crate.

pub mod backlog;
pub mod cards;
pub mod config;
pub mod db;
pub mod domain;
pub mod egress;
pub mod environment;
pub mod events;
pub mod gateway;
pub mod health;
pub mod http_server;
pub mod init;
pub mod kafka;
pub mod lock;
pub mod metadata;
pub mod metrics;
pub mod outbox;
pub mod redis_connection;
pub mod refunds;
pub mod reseal;
pub mod retry;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod signature;
pub mod supervisor;
pub mod telemetry;
pub mod trace;
pub mod transactions;

pub use config::Settings;
