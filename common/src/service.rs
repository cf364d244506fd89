//! The shape every Kafka-driven service shares: a consumer group member, an outbox
//! relay for the events its handler writes, and a health endpoint, all stopped by one
//! shutdown token. If the consumer gives up (a transient failure outlasted its
//! retries) the whole service stops with the error, so its supervisor restarts it.

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, ConsumerLoop, Handler, Producer};
use crate::outbox::Relay;
use crate::{db, health, Settings};

/// A consuming service, connected, subscribed and bound, not yet running.
pub struct Worker {
    pub pool: PgPool,
    listener: TcpListener,
    consumer: ConsumerLoop,
    relay: Relay,
}

impl Worker {
    /// Connects to PostgreSQL (migrating if configured), creates the suite's topics if
    /// missing, joins the consumer group `<group_prefix>.<name>` on `topics`, and binds
    /// the health endpoint on `listen`.
    pub async fn build(
        settings: &Settings,
        name: &str,
        listen: &str,
        topics: &[&str],
    ) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database).await?;
        let all: Vec<String> = kafka::all_topics(&settings.kafka.topics);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        kafka::ensure_topics(&settings.kafka, &all).await?;
        let producer = Producer::new(&settings.kafka)?;
        let relay = Relay::new(
            pool.clone(),
            producer,
            settings.kafka.topics.clone(),
            &settings.outbox,
        );
        let consumer = ConsumerLoop::subscribe(&settings.kafka, &settings.group_id(name), topics)?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        Ok(Worker {
            pool,
            listener,
            consumer,
            relay,
        })
    }

    /// The port of the health endpoint.
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Runs until `shutdown` is cancelled or the consumer gives up (which cancels it).
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let health = tokio::spawn(health::serve(
            self.listener,
            health::router(self.pool.clone()),
            shutdown.clone(),
        ));
        let consumed = self.consumer.run(&handler, shutdown.clone()).await;
        shutdown.cancel();
        relay.await.context("the outbox relay panicked")?;
        health
            .await
            .context("the health endpoint panicked")?
            .context("serving the health endpoint")?;
        self.pool.close().await;
        consumed
    }
}
