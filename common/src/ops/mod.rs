//! Operations: how a service starts, runs and stops (service, supervisor, shutdown,
//! init), what it tells operators (metrics, health, telemetry, trace), its listeners
//! and its retries.

pub mod health;
pub mod http_server;
pub mod init;
pub mod metrics;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod trace;
