//! The one-shot preparation of a deployment, before any replica starts: the schema's
//! migrations and every topic with its dead-letter topic. `paygate-api init` runs it as
//! the compose init job and the Kubernetes migration Job, so a failing migration stops
//! a release before its rollout, and topics get `kafka.partitions` partitions from
//! the configuration rather than from whichever service happened to start first.
//! Services still do both on their own (migrations when `database.migrate_on_start`,
//! idempotent and under PostgreSQL's advisory lock), which keeps this job optional.

use crate::{db, kafka, Settings};

/// Applies the migrations (whatever `database.migrate_on_start` says) and creates the
/// missing topics; returns the names of every topic it ensured.
pub async fn run(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    pool.close().await;
    let topics = kafka::all_topics(&settings.kafka.topics);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka::ensure_topics(&settings.kafka, &names).await?;
    Ok(topics)
}
