//! The shape every Kafka-driven service shares: a consumer group member, an outbox
//! relay for the events its handler writes, a health endpoint (`/healthz`, `/readyz`)
//! and a metrics endpoint on a port of its own (`/metrics`), all stopped by one shutdown token and watched by one
//! [`Supervisor`]: if any of them (or a companion of the service's own) ends or
//! panics, the whole service stops with the error, so its supervisor restarts it; on
//! SIGTERM everything drains within `shutdown.grace_period_ms`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Readiness;
use crate::http_server::{self, Limits};
use crate::kafka::{ConsumerLoop, Handler};
use crate::outbox::Relay;
use crate::supervisor::Supervisor;
use crate::{backlog, db, health, metrics, Settings};

/// Where a worker listens: its health port (probes, and what the service reports
/// about itself) and its metrics port (the scraper's).
#[derive(Debug, Clone, Copy)]
pub struct Listen<'a> {
    pub health: &'a str,
    pub metrics: &'a str,
}

/// A consuming service, connected, subscribed and bound, not yet running.
pub struct Worker {
    pub pool: PgPool,
    listener: TcpListener,
    metrics_listener: TcpListener,
    /// The bounds of both listeners.
    limits: Limits,
    consumer: ConsumerLoop,
    /// `None` for a service that writes no events (it has nothing to relay).
    relay: Option<Relay>,
    readiness: Readiness,
    /// How long a stop may take.
    grace: Duration,
}

/// A task of the service's own, run beside the consumer: its name (for errors and
/// logs) and its handle. It must end only when the shutdown token is cancelled.
pub type Companion = (&'static str, JoinHandle<()>);

impl Worker {
    /// Connects to PostgreSQL (migrating if configured), creates the suite's topics if
    /// missing, joins the consumer group `<group_prefix>.<name>` on `topics`, and binds
    /// the health and metrics endpoints on `listen`. Readiness checks PostgreSQL, the broker and the
    /// consumer's assignment; a service that takes locks adds Redis ([`Worker::needs_redis`]).
    pub async fn build(
        settings: &Settings,
        name: &str,
        listen: Listen<'_>,
        topics: &[&str],
    ) -> anyhow::Result<Self> {
        Self::assemble(settings, name, listen, topics, true).await
    }

    /// [`Worker::build`] for a service that writes no events: it creates the suite's
    /// topics but runs no outbox relay.
    pub async fn build_without_relay(
        settings: &Settings,
        name: &str,
        listen: Listen<'_>,
        topics: &[&str],
    ) -> anyhow::Result<Self> {
        Self::assemble(settings, name, listen, topics, false).await
    }

    async fn assemble(
        settings: &Settings,
        name: &str,
        listen: Listen<'_>,
        topics: &[&str],
        with_relay: bool,
    ) -> anyhow::Result<Self> {
        metrics::install();
        let pool = db::connect(&settings.database).await?;
        // The relay creates the suite's topics; without one, the worker does.
        let relay = if with_relay {
            Some(Relay::for_service(settings).await?)
        } else {
            let all = crate::kafka::all_topics(&settings.kafka.topics);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            crate::kafka::ensure_topics(&settings.kafka, &all).await?;
            None
        };
        let consumer = ConsumerLoop::subscribe(&settings.kafka, &settings.group_id(name), topics)?;
        let listener = health::bind(listen.health).await?;
        let metrics_listener = health::bind(listen.metrics).await?;
        let readiness = Readiness::new(pool.clone())
            .with_broker(
                consumer.producer(),
                topics.first().copied().unwrap_or_default(),
            )
            .with_consumer(consumer.assignment());
        Ok(Worker {
            pool,
            listener,
            metrics_listener,
            limits: Limits::from(&settings.http),
            consumer,
            relay,
            readiness,
            grace: settings.shutdown.grace_period(),
        })
    }

    /// Readiness checks Redis too, through `redis`.
    pub fn needs_redis(mut self, redis: ConnectionManager) -> Self {
        self.readiness = self.readiness.with_redis(redis);
        self
    }

    /// The port of the health endpoint.
    pub fn port(&self) -> u16 {
        health::port(&self.listener)
    }

    /// The port of the metrics endpoint.
    pub fn metrics_port(&self) -> u16 {
        health::port(&self.metrics_listener)
    }

    /// Runs until `shutdown` is cancelled or a task of the service ends (which cancels
    /// it). `companions` are the service's own background tasks, stopped by the same
    /// token; they finish before the database pool closes.
    pub async fn run<H: Handler + 'static>(
        self,
        handler: H,
        companions: Vec<Companion>,
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
        companions: Vec<Companion>,
        routes: Router,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tasks = Supervisor::new(shutdown.clone(), self.grace);
        if let Some(relay) = self.relay {
            let token = shutdown.clone();
            tasks.spawn("outbox relay", async move {
                relay.run(token).await;
                Ok(())
            });
        }
        tasks.spawn(
            "outbox backlog sampler",
            backlog::sample(self.pool.clone(), shutdown.clone()),
        );
        let router = health::router(self.readiness)
            .merge(routes)
            .layer(axum::middleware::from_fn(metrics::track_http));
        let served = http_server::serve(self.listener, router, self.limits, shutdown.clone());
        tasks.spawn("health endpoint", async move { Ok(served.await?) });
        let scraped = metrics::serve(self.metrics_listener, self.limits, shutdown.clone());
        tasks.spawn("metrics endpoint", async move { Ok(scraped.await?) });
        let consumer = self.consumer;
        let token = shutdown.clone();
        tasks.spawn("consumer", async move {
            consumer.run(Arc::new(handler), token).await
        });
        for (name, companion) in companions {
            tasks.watch(name, companion);
        }
        let result = tasks.run().await;
        self.pool.close().await;
        result
    }
}
