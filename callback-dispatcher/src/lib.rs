//! Paygate's callback-dispatcher: tells merchants about every status change.
//!
//! Two halves, joined by the `webhook_delivery` table:
//! - [`record`]: the consumer of `paygate.transactions.status` records one delivery per
//!   status event and endpoint that takes its type (a merchant has any number; a
//!   payment may add its own `notification_url`), with the exact body that will be
//!   signed;
//! - [`sender`]: claims due deliveries continuously, sends each Standard-Webhooks
//!   signed ([`attempt`]), records every attempt and keeps each endpoint's health —
//!   in order per transaction and endpoint, isolated per endpoint, within each
//!   endpoint's rate limit across replicas ([`limit`]), only to allowed addresses
//!   ([`paygate_common::egress`]).
//!
//! A crash mid-send loses nothing: the lease runs out and the delivery is sent again with
//! the same `webhook-id`, which is how merchants deduplicate.

pub mod attempt;
pub mod delivered;
pub mod limit;
pub mod record;
pub mod sender;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use paygate_common::egress::{self, GuardedResolver};
use paygate_common::kafka::Batched;
use paygate_common::service::{Listen, Worker};
use paygate_common::Settings;

pub use record::StatusHandler;
pub use sender::Sender;

pub struct Application {
    worker: Worker,
    handler: Batched<StatusHandler>,
    sender: Sender,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let policy = settings.callback_dispatcher.egress_policy();
        Self::build_with_resolver(settings, GuardedResolver::system(policy)).await
    }

    /// [`Application::build`] resolving webhook hosts with `resolver` (tests map names
    /// to chosen addresses through [`GuardedResolver::over`]; the guard stays).
    pub async fn build_with_resolver(
        settings: Settings,
        resolver: GuardedResolver,
    ) -> anyhow::Result<Self> {
        use paygate_common::environment::Uses;
        // Only the secrets ring: this service talks to merchants' URLs and never holds
        // the card ring.
        settings.refuse_development_secrets(&[Uses::SecretKeys, Uses::WebhookEgress])?;
        let topics = [settings.kafka.topics.transactions_status.as_str()];
        // It writes deliveries, never events: no outbox relay.
        let worker = Worker::build_without_relay(
            &settings,
            "callback-dispatcher",
            Listen {
                health: &settings.callback_dispatcher.listen,
                metrics: &settings.callback_dispatcher.metrics_listen,
            },
            &topics,
        )
        .await?;
        let wake = Arc::new(Notify::new());
        let handler = Batched::new(
            StatusHandler {
                pool: worker.pool.clone(),
                wake: wake.clone(),
            },
            settings.kafka.max_in_flight,
            paygate_common::batch::AT_ONCE,
        );
        let http = http_client(&settings, resolver)?;
        let keys = settings.secrets.key_ring()?;
        // Its claims and attempt records commit without waiting for the WAL flush: lost
        // in a PostgreSQL crash, they mean a webhook sent again under the same
        // `webhook-id`, as after any crash mid-send. The deliveries themselves are
        // recorded on the worker's pool, flushed before the offset is stored.
        let bookkeeping = paygate_common::db::connect_unflushed(
            &settings.database,
            settings.database.max_connections,
        )
        .await?;
        let limiter = limit::RateLimiter::new(&settings.redis);
        let sender = Sender::new(
            bookkeeping,
            &settings.callback_dispatcher,
            keys,
            http,
            wake,
            limiter,
        );
        Ok(Application {
            worker,
            handler,
            sender,
        })
    }

    pub fn port(&self) -> u16 {
        self.worker.port()
    }

    /// The port of its `/metrics`.
    pub fn metrics_port(&self) -> u16 {
        self.worker.metrics_port()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sender = tokio::spawn(self.sender.run(shutdown.clone()));
        self.worker
            .run(self.handler, vec![("webhook sender", sender)], shutdown)
            .await
    }
}

/// The client webhooks are sent with: rustls with the configured roots, the request
/// timeout, no redirects, and `resolver` (which applies the egress policy to every
/// address a merchant's host resolves to).
pub fn http_client(
    settings: &Settings,
    resolver: GuardedResolver,
) -> anyhow::Result<reqwest::Client> {
    egress::client_builder(&settings.tls)?
        .dns_resolver(Arc::new(resolver))
        .timeout(Duration::from_millis(
            settings.callback_dispatcher.request_timeout_ms,
        ))
        .user_agent("Paygate-Webhooks/1")
        .build()
        .context("building the webhook HTTP client")
}
