//! Topic creation at start: the broker may not auto-create topics (tansu does not).

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::base_config;
use crate::config::{KafkaSettings, Topics};

/// Creates the topics that are missing (the broker may not create them on first use).
/// Topics that already exist are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings)
        .create()
        .context("creating the Kafka admin client")?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .context("creating Kafka topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Every topic of the suite and their dead-letter topics.
pub fn all_topics(topics: &Topics) -> Vec<String> {
    topics
        .all()
        .iter()
        .flat_map(|t| [t.to_string(), Topics::dead_letter(t)])
        .collect()
}
