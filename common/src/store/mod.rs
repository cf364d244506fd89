//! Storage and messaging: the PostgreSQL pool and schema, Kafka (consumer loop,
//! producer, topics), the outbox relay that joins them, and Redis (per-transaction
//! locks and its connection); work gathered into batches that share one commit
//! ([`batch`], [`group_commit`]).

pub mod backlog;
pub mod batch;
pub mod db;
pub mod group_commit;
pub mod kafka;
pub mod lock;
pub mod outbox;
pub mod redis_connection;
