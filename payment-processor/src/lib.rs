//! Paygate's payment-processor: decides where money goes, never charges twice and never
//! stalls. It consumes `paygate.payments.requested` and its own retry topic
//! `paygate.payments.retry` with one consumer, many payments in flight and one at a time
//! per transaction, each under the transaction's Redis lock (extended while a gateway
//! call is out) and behind the version fence.
//!
//! Each job has its own file:
//! - [`route`]: a pending payment that names no gateway is offered to its routed
//!   gateways, best first. Before each call the gateway is written on the transaction
//!   with a version bump (the fencing token of that choice), so a worker whose write is
//!   refused stops before it asks anyone. Only a gateway that proves it took nothing
//!   (connection refused, `503`) is passed over for the next.
//! - [`resolve`]: a pending payment that names a gateway had an ambiguous attempt there
//!   (a timeout, a 5xx): the gateway may hold the money, so the payment belongs to it
//!   until it gives a definite answer about our reference. It is asked by status query;
//!   "unknown reference" is no answer while the attempt is younger than the gateway's
//!   settle window, and after it only the same request, same reference, is sent again
//!   (fenced like a first attempt). Nothing but a definite accept or decline moves it:
//!   never to another gateway by itself — only an operator's recorded release does.
//! - [`answer`]: a definite answer (accepted, completed, declined) is applied through the
//!   version fence; one that arrives after the payment moved on is recorded in its
//!   history, never dropped, and one that contradicts a final status flags the payment
//!   for a human (`review`).
//! - [`retry`]: waiting is never done in a handler: a payment to retry is produced to the
//!   retry topic with a due time (exponential backoff, full jitter). When the attempts
//!   run out, a payment whose gateways were all down is `failed`; one still ambiguous is
//!   never failed: it stays pending, marked unresolved with its reason, on the
//!   dead-letter topic for operators, and [`reconcile`] keeps asking its gateway.
//! - [`reconcile`]: unresolved payments are asked about again on a slow schedule,
//!   `processing` payments whose callback is overdue are asked by status query, with
//!   backoff, and flagged `no_callback` for a human when their gateway's limit passes,
//!   and pending payments without progress are swept up.
//! - [`refund`]: a refund (its messages share these topics, told apart by the `rfd_`
//!   id) is asked of the gateway that charged its payment, under the same rules:
//!   fenced attempts, status queries after an ambiguous answer, never failed while the
//!   gateway may have paid it; a sweep takes up refunds without progress.
//! - [`settlement`]: reconciliation against the gateways' settlement reports, per
//!   gateway and period, scheduled and on demand (its command topic shares this
//!   consumer); what a report settles goes through [`answer`] like a status answer.
//! - [`call`]: every call to a gateway, under its concurrency limit and circuit breaker.
//! - [`routing`], [`strategy`], [`scores`]: which gateways a payment is offered to and
//!   in what order — the cached routing tables and policies, the strategy that orders
//!   the candidates (priority, success rate, volume split, or the merchant's pinned
//!   gateways), and the success-rate windows shared in Redis.

mod answer;
pub mod breaker;
mod call;
pub mod reconcile;
mod refund;
mod resolve;
mod retry;
mod route;
pub mod routing;
pub mod scores;
pub mod settlement;
pub mod strategy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use axum::routing::get;
use axum::{Json, Router};
use prost::Message;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use paygate_common::cards::{CvvVault, KeyRing};
use paygate_common::config::{PaymentProcessorSettings, Topics};
use paygate_common::domain::{RefundId, Status, TransactionId};
use paygate_common::egress::{GuardedResolver, Policy};
use paygate_common::events::proto;
use paygate_common::group_commit::GroupCommit;
use paygate_common::kafka::{Handler, HandlerError, Inbound, Producer};
use paygate_common::lock::Locks;
use paygate_common::service::{Listen, Worker};
use paygate_common::transactions;
use paygate_common::Settings;

use breaker::Breakers;
use routing::RouteTable;

/// The event type of a retry message.
pub const RETRY_EVENT: &str = "payment.retry";

/// The service: a worker whose handler is [`PaymentHandler`], with the route cache's
/// refresher and the reconciler beside it.
pub struct Application {
    worker: Worker,
    handler: PaymentHandler,
    settings: PaymentProcessorSettings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        use paygate_common::environment::Uses;
        settings.refuse_development_secrets(&[Uses::CardKeys, Uses::GatewayEgress])?;
        let topics = [
            settings.kafka.topics.payments_requested.as_str(),
            settings.kafka.topics.payments_retry.as_str(),
            settings.kafka.topics.settlement_commands.as_str(),
        ];
        let worker = Worker::build(
            &settings,
            "payment-processor",
            Listen {
                health: &settings.payment_processor.listen,
                metrics: &settings.payment_processor.metrics_listen,
            },
            &topics,
        )
        .await?;
        let handler = PaymentHandler::build(&settings, worker.pool.clone()).await?;
        let worker = worker.needs_redis(handler.locks.connection());
        Ok(Application {
            worker,
            handler,
            settings: settings.payment_processor,
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
        let refresher = tokio::spawn(self.handler.routes.clone().refresh(
            self.worker.pool.clone(),
            Duration::from_millis(self.settings.route_refresh_ms),
            shutdown.clone(),
        ));
        let every = Duration::from_millis(self.settings.reconcile_interval_ms);
        let reconciler = tokio::spawn(reconcile::run(
            self.handler.clone(),
            every,
            shutdown.clone(),
        ));
        let chaser = tokio::spawn(reconcile::chase(
            self.handler.clone(),
            every,
            shutdown.clone(),
        ));
        let sweeper = tokio::spawn(reconcile::sweep(
            self.handler.clone(),
            every,
            self.settings.stale_pending(),
            shutdown.clone(),
        ));
        let refunds = tokio::spawn(refund::sweep(
            self.handler.clone(),
            every,
            self.settings.stale_pending(),
            shutdown.clone(),
        ));
        let settlements =
            tokio::spawn(settlement::Runner::new(self.handler.clone()).run(shutdown.clone()));
        let (changes, reported) = tokio::sync::mpsc::unbounded_channel();
        self.handler.breakers.report_to(changes);
        let recorder = tokio::spawn(breaker::record_changes(
            self.worker.pool.clone(),
            reported,
            shutdown.clone(),
        ));
        let breakers = self.handler.breakers.clone();
        let circuits = Router::new().route(
            "/circuits",
            get(move || {
                let breakers = breakers.clone();
                async move { Json(breakers.report()) }
            }),
        );
        self.worker
            .run_with_routes(
                self.handler,
                vec![
                    ("route refresher", refresher),
                    ("reconciler", reconciler),
                    ("callback chaser", chaser),
                    ("sweeper", sweeper),
                    ("refund sweeper", refunds),
                    ("settlement runner", settlements),
                    ("circuit recorder", recorder),
                ],
                circuits,
                shutdown,
            )
            .await
    }
}

/// Routes one payment; cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct PaymentHandler {
    pool: PgPool,
    /// Attempts at gateways, each committed (with the others of its moment) before
    /// its gateway is asked.
    attempts: GroupCommit<transactions::Attempt>,
    /// Gateways' definite answers applied, committed with the others of their moment.
    moves: GroupCommit<answer::Move>,
    locks: Locks,
    http: reqwest::Client,
    routes: RouteTable,
    /// Success-rate windows, shared by every replica (Redis).
    scores: scores::Scores,
    breakers: Arc<Breakers>,
    /// At most `gateway.max_concurrency` calls in flight per gateway.
    limits: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// The card ring: opens card numbers for the acquirer (this service holds no other).
    cards: KeyRing,
    /// Where gateways may be reached; the resolver of `http` applies it at connect time.
    egress: Policy,
    /// Card CVVs waiting for the acquirer.
    cvvs: CvvVault,
    producer: Producer,
    topics: Topics,
    settings: PaymentProcessorSettings,
    /// `<api public url>/v1/callbacks`; the gateway code is appended.
    callback_base: String,
}

/// What became of an attempt to settle a payment.
pub(crate) enum Step {
    /// Settled, or someone else is on it: nothing more to do.
    Done,
    /// Try again later. `ambiguous`: the gateway it names may hold the money.
    Retry { reason: String, ambiguous: bool },
}

impl Handler for PaymentHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        if message.topic == self.topics.settlement_commands {
            return self.handle_settlement_command(message).await;
        }
        let (id, attempt) = if message.topic == self.topics.payments_retry {
            let retry = proto::PaymentRetry::decode(message.payload.as_slice())
                .map_err(HandlerError::permanent)?;
            (retry.transaction_id, retry.attempt.max(1))
        } else {
            let requested = proto::PaymentRequested::decode(message.payload.as_slice())
                .map_err(HandlerError::permanent)?;
            match requested.refund {
                Some(refund) => (refund.id, 1),
                None => (requested.transaction.map(|t| t.id).unwrap_or_default(), 1),
            }
        };
        // A refund's messages share the topics; its id says which it is.
        if id.starts_with(RefundId::PREFIX) {
            let id: RefundId = id.parse().map_err(HandlerError::permanent)?;
            return self.handle_refund(&id, attempt, message).await;
        }
        let id: TransactionId = id.parse().map_err(HandlerError::permanent)?;
        let step = match self.settle_locked(&id).await {
            Ok(step) => step,
            // It will be dead-lettered: the payment must not be left pending with nobody
            // looking at it (a card whose key left the ring, a card payment with no card).
            Err(HandlerError::Permanent(error)) => {
                let reason = format!("stopped by a permanent error: {error:#}");
                self.mark_unresolved(&id, &reason).await?;
                return Err(HandlerError::Permanent(error));
            }
            Err(transient) => return Err(transient),
        };
        match step {
            Step::Done => Ok(()),
            Step::Retry { reason, ambiguous } => {
                self.retry_later(&id, attempt, &reason, ambiguous, message)
                    .await
            }
        }
    }
}

impl PaymentHandler {
    pub async fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let policy = settings.payment_processor.egress_policy();
        Self::build_with_resolver(settings, pool, GuardedResolver::system(policy)).await
    }

    /// [`PaymentHandler::build`] resolving gateway hosts with `resolver` (tests map names
    /// to chosen addresses through [`GuardedResolver::over`]; the guard stays).
    pub async fn build_with_resolver(
        settings: &Settings,
        pool: PgPool,
        resolver: GuardedResolver,
    ) -> anyhow::Result<Self> {
        let cards = settings.cards.key_ring()?;
        let locks = Locks::connect(&settings.redis).await?;
        Ok(PaymentHandler {
            scores: scores::Scores::new(locks.connection(), settings.redis.key_prefix.clone()),
            routes: RouteTable::load(&pool)
                .await
                .context("loading gateways and routes")?,
            attempts: GroupCommit::new(pool.clone()),
            moves: GroupCommit::new(pool.clone()),
            pool,
            locks,
            // rustls with the configured roots, no redirects, no proxy, and every
            // address a gateway's host resolves to checked (see `egress`).
            http: paygate_common::egress::client_builder(&settings.tls)?
                .dns_resolver(Arc::new(resolver))
                .connect_timeout(Duration::from_secs(3))
                .build()
                .context("building the HTTP client")?,
            breakers: Arc::new(Breakers::new(&settings.payment_processor.breaker)),
            limits: Arc::default(),
            cvvs: CvvVault::connect(&settings.redis, cards.clone(), settings.cards.cvv_ttl())
                .await?,
            cards,
            egress: settings.payment_processor.egress_policy(),
            producer: Producer::new(&settings.kafka)?,
            topics: settings.kafka.topics.clone(),
            settings: settings.payment_processor.clone(),
            callback_base: format!(
                "{}/v1/callbacks",
                settings.api.public_url.trim_end_matches('/')
            ),
        })
    }

    /// The same handler taking its locks from `locks` (tests use short TTLs, or a
    /// separate prefix to play a worker whose lock was lost).
    pub fn with_locks(mut self, locks: Locks) -> Self {
        self.locks = locks;
        self
    }

    /// The circuit breakers, for reporting.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Settles what it can of the payment under its lock.
    async fn settle_locked(&self, id: &TransactionId) -> Result<Step, HandlerError> {
        self.locks
            .run_locked(id.as_str(), self.settle(id))
            .await
            .map_err(HandlerError::transient)?
            .unwrap_or_else(|| {
                Err(HandlerError::transient(anyhow!(
                    "transaction {id} is locked by another worker"
                )))
            })
    }

    async fn settle(&self, id: &TransactionId) -> Result<Step, HandlerError> {
        let transaction = transactions::find(&self.pool, id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| HandlerError::permanent(anyhow!("transaction {id} does not exist")))?;
        if transaction.status != Status::Pending {
            tracing::info!(transaction_id = %id, status = %transaction.status, "already routed; nothing to do");
            return Ok(Step::Done);
        }
        match transaction.gateway.clone() {
            Some(code) => self.resolve(transaction, &code).await,
            None => self.route(transaction).await,
        }
    }
}
