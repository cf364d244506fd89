//! Storage and messaging: the PostgreSQL pool and schema, Kafka (consumer loop,
//! producer, topics), the outbox relay that joins them, and Redis (per-transaction
//! locks and its connection).

pub mod backlog;
pub mod db;
pub mod kafka;
pub mod lock;
pub mod outbox;
pub mod redis_connection;
