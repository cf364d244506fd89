//! The shape every Kafka-driven service shares: a consumer group member, an outbox
//! relay for the events its handler writes, and a health endpoint, all stopped by one
//! shutdown token. If the consumer gives up (a transient failure outlasted its
//! retries) the whole service stops with the error, so its supervisor restarts it.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::{ConsumerLoop, Handler};
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
        let relay = Relay::for_service(pool.clone(), settings).await?;
        let consumer = ConsumerLoop::subscribe(&settings.kafka, &settings.group_id(name), topics)?;
        let listener = health::bind(listen).await?;
        Ok(Worker {
            pool,
            listener,
            consumer,
            relay,
        })
    }

    /// The port of the health endpoint.
    pub fn port(&self) -> u16 {
        health::port(&self.listener)
    }

    /// Runs until `shutdown` is cancelled or the consumer gives up (which cancels it).
    /// `companions` are the service's own background tasks, stopped by the same token;
    /// they finish before the database pool closes.
    pub async fn run<H: Handler + 'static>(
        self,
        handler: H,
        companions: Vec<JoinHandle<()>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.run_with_routes(handler, companions, Router::new(), shutdown)
            .await
    }

    /// [`Worker::run`], with `routes` served beside the health endpoints (what a service
    /// reports about itself, such as its circuit breakers).
    pub async fn run_with_routes<H: Handler + 'static>(
        self,
        handler: H,
        companions: Vec<JoinHandle<()>>,
        routes: Router,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let health = tokio::spawn(health::serve(
            self.listener,
            health::router(self.pool.clone()).merge(routes),
            shutdown.clone(),
        ));
        let consumed = self.consumer.run(Arc::new(handler), shutdown.clone()).await;
        shutdown.cancel();
        relay.await.context("the outbox relay panicked")?;
        for companion in companions {
            companion.await.context("a background task panicked")?;
        }
        health
            .await
            .context("the health endpoint panicked")?
            .context("serving the health endpoint")?;
        self.pool.close().await;
        consumed
    }
}
