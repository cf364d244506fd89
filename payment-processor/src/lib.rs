//! Paygate's payment-processor: decides where money goes, never charges twice and never
//! stalls. It consumes `paygate.payments.requested` and its own retry topic
//! `paygate.payments.retry` with one consumer, many payments in flight and one at a time
//! per transaction, each under the transaction's Redis lock (extended while a gateway
//! call is out) and behind the version fence.
//!
//! For a pending payment that names no gateway, the routed gateways are tried best
//! first, skipping those whose circuit is open or that cannot take its payment method.
//! Before each call the gateway is written on the transaction with a version bump: the
//! fencing token of that choice, so a worker whose write is refused stops before it
//! asks anyone. Then, by [`Outcome`]:
//! - accepted: `processing`, with the gateway and its transaction id;
//! - declined: `failed` with the gateway's reason; no other gateway is asked;
//! - unavailable (proven not taken): the next gateway;
//! - ambiguous (it may have taken it): no other gateway, ever; the payment waits on the
//!   retry topic and is then asked about at that gateway by status query.
//!
//! A pending payment that names a gateway has an unresolved attempt there: only that
//! gateway is asked, by status query first (an unknown reference is submitted again,
//! with the same reference, which the gateway's idempotency makes safe).
//!
//! Waiting is never done in a handler: a payment to retry is produced to the retry topic
//! with a due time (exponential backoff, full jitter) and its message is committed; the
//! consumer holds the retry until due without holding anything else. When the attempts
//! run out, a payment whose gateways were all down is `failed` and copied to the
//! dead-letter topic with the reason; one still ambiguous is never failed (the gateway
//! may hold the money): it stays pending, marked unresolved, goes to the dead-letter
//! topic for operators, and [`reconcile`] asks its gateway again on a slow schedule, so
//! a late status answer (or callback) still settles it.

pub mod breaker;
pub mod reconcile;
pub mod routing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
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
use paygate_common::domain::{EventId, Status, TransactionId};
use paygate_common::events::proto;
use paygate_common::gateway::{Call, GatewayRecord, Outcome, PaymentMethod, PaymentOrder};
use paygate_common::kafka::{Envelope, Handler, HandlerError, Inbound, Producer};
use paygate_common::lock::Locks;
use paygate_common::metrics;
use paygate_common::retry::full_jitter;
use paygate_common::service::Worker;
use paygate_common::transactions::{self, Change, TransactionRecord, TransitionError};
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
        let topics = [
            settings.kafka.topics.payments_requested.as_str(),
            settings.kafka.topics.payments_retry.as_str(),
        ];
        let worker = Worker::build(
            &settings,
            "payment-processor",
            &settings.payment_processor.listen,
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

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let refresher = tokio::spawn(self.handler.routes.clone().refresh(
            self.worker.pool.clone(),
            Duration::from_millis(self.settings.route_refresh_ms),
            shutdown.clone(),
        ));
        let reconciler = tokio::spawn(reconcile::run(
            self.handler.clone(),
            Duration::from_millis(self.settings.reconcile_interval_ms),
            shutdown.clone(),
        ));
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
    locks: Locks,
    http: reqwest::Client,
    routes: RouteTable,
    breakers: Arc<Breakers>,
    /// At most `gateway.max_concurrency` calls in flight per gateway.
    limits: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    cards: KeyRing,
    /// Card CVVs waiting for the acquirer.
    cvvs: CvvVault,
    producer: Producer,
    topics: Topics,
    settings: PaymentProcessorSettings,
    /// `<api public url>/v1/callbacks`; the gateway code is appended.
    callback_base: String,
}

/// What became of an attempt to settle a payment.
enum Step {
    /// Settled, or someone else is on it: nothing more to do.
    Done,
    /// Try again later. `ambiguous`: the gateway it names may hold the money.
    Retry { reason: String, ambiguous: bool },
}

impl Handler for PaymentHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        let (id, attempt) = if message.topic == self.topics.payments_retry {
            let retry = proto::PaymentRetry::decode(message.payload.as_slice())
                .map_err(HandlerError::permanent)?;
            (retry.transaction_id, retry.attempt.max(1))
        } else {
            let requested = proto::PaymentRequested::decode(message.payload.as_slice())
                .map_err(HandlerError::permanent)?;
            (requested.transaction.map(|t| t.id).unwrap_or_default(), 1)
        };
        let id: TransactionId = id.parse().map_err(HandlerError::permanent)?;
        let step = self.settle_locked(&id).await?;
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
        let cards = KeyRing::from_config(&settings.cards.keys)?;
        Ok(PaymentHandler {
            routes: RouteTable::load(&pool)
                .await
                .context("loading gateways and routes")?,
            pool,
            locks: Locks::connect(&settings.redis).await?,
            // rustls with the configured roots, no redirects (see `egress`).
            http: paygate_common::egress::client_builder(&settings.tls)?
                .connect_timeout(Duration::from_secs(3))
                .build()
                .context("building the HTTP client")?,
            breakers: Arc::new(Breakers::new(&settings.payment_processor.breaker)),
            limits: Arc::default(),
            cvvs: CvvVault::connect(&settings.redis, cards.clone(), settings.cards.cvv_ttl())
                .await?,
            cards,
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

    /// A pending payment names `code`: an attempt there is unresolved. Only that gateway
    /// is asked, status first.
    async fn resolve(
        &self,
        transaction: TransactionRecord,
        code: &str,
    ) -> Result<Step, HandlerError> {
        let id = transaction.id.clone();
        let Some(gateway) = self.routes.snapshot().gateway(code).cloned() else {
            return Ok(Step::Retry {
                reason: format!("gateway {code} is not configured"),
                ambiguous: true,
            });
        };
        if !self.breakers.permit(code) {
            return Ok(Step::Retry {
                reason: format!("{code}: circuit open"),
                ambiguous: true,
            });
        }
        let reference = id.to_string();
        let outcome = self
            .call(&gateway, "query", |call| {
                let reference = &reference;
                async move { Ok(gateway_adapter(call.gateway)?.query(call, reference).await) }
            })
            .await?;
        tracing::info!(transaction_id = %id, gateway = code, ?outcome, "status query answered");
        match outcome {
            // It never got the payment: the same request again, same reference.
            Outcome::Unknown => match self.submit(&transaction, &gateway).await? {
                // Proven not taken there: free to route it from the top.
                Outcome::Unavailable { reason } => match self.release(&transaction).await? {
                    Some(released) => {
                        tracing::info!(transaction_id = %id, gateway = code, %reason, "not taken; routing again");
                        self.route(released).await
                    }
                    None => Ok(Step::Done),
                },
                outcome => self.apply(&transaction, &gateway, outcome).await,
            },
            outcome => self.apply(&transaction, &gateway, outcome).await,
        }
    }

    /// A pending payment that names no gateway: offered to its routes in order.
    async fn route(&self, transaction: TransactionRecord) -> Result<Step, HandlerError> {
        let method = transaction.payment_method();
        let routed = self.routes.snapshot().candidates(&transaction);
        let takers: Vec<GatewayRecord> = routed
            .into_iter()
            .filter(|g| g.adapter().is_some_and(|a| a.takes(method)))
            .collect();
        if takers.is_empty() {
            let reason = format!(
                "no gateway routes a {} {} {} for country {}",
                if method == PaymentMethod::Card {
                    "card"
                } else {
                    "plain"
                },
                transaction.kind,
                transaction.currency,
                transaction.country.as_deref().unwrap_or("(none)")
            );
            self.finish(
                &transaction,
                Status::Failed,
                Change {
                    failure_reason: Some(reason),
                    ..Change::default()
                },
            )
            .await?;
            return Ok(Step::Done);
        }

        let mut current = transaction;
        let mut reasons = Vec::new();
        for gateway in &takers {
            if !self.breakers.permit(&gateway.code) {
                reasons.push(format!("{}: circuit open", gateway.code));
                continue;
            }
            let attempt = {
                let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
                match transactions::record_attempt(&mut tx, &current, &gateway.code).await {
                    Ok(record) => {
                        tx.commit().await.map_err(HandlerError::transient)?;
                        record
                    }
                    Err(TransitionError::Database(error)) => {
                        return Err(HandlerError::transient(error))
                    }
                    Err(error) => {
                        // Fenced out: another worker moved it. Ask nobody.
                        tracing::info!(transaction_id = %current.id, %error, "changed concurrently; leaving it");
                        return Ok(Step::Done);
                    }
                }
            };
            match self.submit_permitted(&attempt, gateway).await? {
                Outcome::Unavailable { reason } => {
                    reasons.push(reason);
                    current = attempt;
                }
                outcome => return self.apply(&attempt, gateway, outcome).await,
            }
        }
        // Every gateway proved it took nothing (or was skipped): forget the last one, so
        // the retry starts from the top.
        if current.gateway.is_some() && self.release(&current).await?.is_none() {
            return Ok(Step::Done);
        }
        Ok(Step::Retry {
            reason: format!("every gateway is unavailable: {}", reasons.join("; ")),
            ambiguous: false,
        })
    }

    /// Acts on a gateway's answer about `transaction`, which names `gateway`.
    async fn apply(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
        outcome: Outcome,
    ) -> Result<Step, HandlerError> {
        match outcome {
            Outcome::Accepted { gateway_txn_id } => {
                let change = Change {
                    gateway: Some(gateway.code.clone()),
                    gateway_txn_id: Some(gateway_txn_id),
                    ..Change::default()
                };
                self.finish(transaction, Status::Processing, change).await?;
                Ok(Step::Done)
            }
            Outcome::Declined { reason } => {
                let change = Change {
                    gateway: Some(gateway.code.clone()),
                    failure_reason: Some(reason),
                    ..Change::default()
                };
                self.finish(transaction, Status::Failed, change).await?;
                Ok(Step::Done)
            }
            // Unknown here means it is still unknown whether the gateway holds it.
            Outcome::Unavailable { reason } | Outcome::Ambiguous { reason } => Ok(Step::Retry {
                reason,
                ambiguous: true,
            }),
            Outcome::Unknown => Ok(Step::Retry {
                reason: format!("{} does not know the payment yet", gateway.code),
                ambiguous: true,
            }),
        }
    }

    /// Submits `transaction` to `gateway` if its circuit lets a call through.
    async fn submit(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
    ) -> Result<Outcome, HandlerError> {
        if !self.breakers.permit(&gateway.code) {
            return Ok(Outcome::Ambiguous {
                reason: format!("{}: circuit open", gateway.code),
            });
        }
        self.submit_permitted(transaction, gateway).await
    }

    async fn submit_permitted(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
    ) -> Result<Outcome, HandlerError> {
        let order = self.order(transaction, gateway).await?;
        let outcome = self
            .call(gateway, "submit", |call| {
                let order = &order;
                async move { Ok(gateway_adapter(call.gateway)?.submit(call, order).await) }
            })
            .await?;
        tracing::info!(transaction_id = %transaction.id, gateway = %gateway.code, ?outcome, "gateway answered");
        Ok(outcome)
    }

    /// Makes one call to `gateway` under its concurrency limit, and tells its circuit
    /// breaker how it went. The caller checked the breaker.
    async fn call<'a, F, Fut>(
        &'a self,
        gateway: &'a GatewayRecord,
        operation: &'static str,
        f: F,
    ) -> Result<Outcome, HandlerError>
    where
        F: FnOnce(Call<'a>) -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, HandlerError>>,
    {
        let limit = self.limit(gateway);
        let _permit = limit
            .acquire_owned()
            .await
            .map_err(|e| HandlerError::transient(anyhow!("gateway limit closed: {e}")))?;
        let started = std::time::Instant::now();
        let outcome = f(Call {
            http: &self.http,
            gateway,
        })
        .await?;
        metrics::gateway_call(
            &gateway.code,
            operation,
            outcome_label(&outcome),
            started.elapsed(),
        );
        let failed = matches!(
            outcome,
            Outcome::Unavailable { .. } | Outcome::Ambiguous { .. }
        );
        self.breakers.record(&gateway.code, !failed);
        Ok(outcome)
    }

    fn limit(&self, gateway: &GatewayRecord) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        limits
            .entry(gateway.code.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    usize::try_from(gateway.max_concurrency).unwrap_or(1).max(1),
                ))
            })
            .clone()
    }

    /// What the gateway is asked to do; a card payment's card is opened only here.
    async fn order(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
    ) -> Result<PaymentOrder, HandlerError> {
        let card = if transaction.payment_method() == PaymentMethod::Card {
            let (key_id, ciphertext) = transactions::sealed_card(&self.pool, &transaction.id)
                .await
                .map_err(HandlerError::transient)?
                .ok_or_else(|| {
                    HandlerError::permanent(anyhow!("card payment {} has no card", transaction.id))
                })?;
            let mut card = self
                .cards
                .open(&key_id, &ciphertext)
                .map_err(HandlerError::permanent)?;
            // Without it (expired, Redis down) the acquirer is asked without one.
            card.cvv = self.cvvs.get(&transaction.id).await.unwrap_or_else(|error| {
                tracing::warn!(transaction_id = %transaction.id, error = %format!("{error:#}"), "no CVV for the acquirer");
                None
            });
            Some(card)
        } else {
            None
        };
        Ok(PaymentOrder {
            reference: transaction.id.to_string(),
            amount: transaction.amount,
            currency: transaction.currency.trim().to_owned(),
            kind: transaction.kind,
            country: transaction.country.clone(),
            callback_url: format!("{}/{}", self.callback_base, gateway.code),
            card,
        })
    }

    /// Forgets the gateway `transaction` names (it proved it took nothing); `None` when
    /// fenced out by a concurrent change.
    async fn release(
        &self,
        transaction: &TransactionRecord,
    ) -> Result<Option<TransactionRecord>, HandlerError> {
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        match transactions::release_attempt(&mut tx, transaction).await {
            Ok(record) => {
                tx.commit().await.map_err(HandlerError::transient)?;
                Ok(Some(record))
            }
            Err(TransitionError::Database(error)) => Err(HandlerError::transient(error)),
            Err(error) => {
                tracing::info!(transaction_id = %transaction.id, %error, "changed concurrently; leaving it");
                Ok(None)
            }
        }
    }

    /// Moves the transaction out of `pending`; a concurrent change (another worker got
    /// there first) is not an error.
    async fn finish(
        &self,
        seen: &TransactionRecord,
        to: Status,
        change: Change,
    ) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        match transactions::transition(&mut tx, seen, to, change).await {
            Ok(record) => {
                // Callbacks that overtook the gateway's answer waited for this moment.
                transactions::announce_parked_callbacks(&mut tx, &record.id)
                    .await
                    .map_err(HandlerError::transient)?;
                tx.commit().await.map_err(HandlerError::transient)?;
                tracing::info!(transaction_id = %record.id, status = %record.status, version = record.version, "transaction moved");
                if record.payment_method() == PaymentMethod::Card {
                    // Authorised or refused: the CVV is not kept a moment longer.
                    if let Err(error) = self.cvvs.forget(&record.id).await {
                        tracing::warn!(transaction_id = %record.id, error = %format!("{error:#}"), "could not delete a CVV; it expires");
                    }
                }
                Ok(())
            }
            Err(error @ (TransitionError::Stale(_) | TransitionError::NotAllowed { .. })) => {
                tracing::info!(transaction_id = %seen.id, %error, "changed concurrently; leaving it");
                Ok(())
            }
            Err(TransitionError::Database(error)) => Err(HandlerError::transient(error)),
        }
    }

    /// Schedules attempt `attempt + 1` on the retry topic, or, when the attempts ran
    /// out, ends the payment's automatic retries: failed (all gateways down) or
    /// unresolved (ambiguous), and copied to the dead-letter topic with the reason.
    async fn retry_later(
        &self,
        id: &TransactionId,
        attempt: u32,
        reason: &str,
        ambiguous: bool,
        message: &Inbound,
    ) -> Result<(), HandlerError> {
        if attempt < self.settings.retry_attempts {
            let delay = full_jitter(
                attempt,
                self.settings.retry_base(),
                self.settings.retry_cap(),
            );
            let due = chrono::Utc::now().timestamp_millis()
                + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let event_id = EventId::new();
            let payload = proto::PaymentRetry {
                event_id: event_id.to_string(),
                transaction_id: id.to_string(),
                attempt: attempt + 1,
                reason: reason.to_owned(),
            }
            .encode_to_vec();
            self.producer
                .schedule(
                    &Envelope {
                        topic: &self.topics.payments_retry,
                        key: id.as_str(),
                        event_id: event_id.as_str(),
                        event_type: RETRY_EVENT,
                        payload: &payload,
                    },
                    due,
                )
                .await
                .map_err(HandlerError::transient)?;
            tracing::info!(transaction_id = %id, attempt, ?delay, %reason, "retry scheduled");
            return Ok(());
        }
        let reason = if ambiguous {
            transactions::mark_unresolved(&self.pool, id)
                .await
                .map_err(HandlerError::transient)?;
            format!("unresolved after {attempt} attempts, left pending at its gateway: {reason}")
        } else {
            let reason = format!("failed after {attempt} attempts: {reason}");
            if let Some(transaction) = transactions::find(&self.pool, id)
                .await
                .map_err(HandlerError::transient)?
                .filter(|t| t.status == Status::Pending && t.gateway.is_none())
            {
                self.finish(
                    &transaction,
                    Status::Failed,
                    Change {
                        failure_reason: Some(reason.clone()),
                        ..Change::default()
                    },
                )
                .await?;
            }
            reason
        };
        tracing::warn!(transaction_id = %id, %reason, "retries exhausted; dead-lettering");
        self.producer
            .dead_letter(message, &reason)
            .await
            .map_err(HandlerError::transient)
    }

    /// Asks about one payment left unresolved at its gateway (see [`reconcile`]).
    pub async fn recheck(&self, id: &TransactionId) -> anyhow::Result<()> {
        let step = self.settle_locked(id).await.map_err(|e| anyhow!("{e}"))?;
        if let Step::Retry { reason, .. } = step {
            transactions::mark_unresolved(&self.pool, id).await?;
            tracing::info!(transaction_id = %id, %reason, "still unresolved");
        }
        Ok(())
    }
}

/// An outcome's class, as the gateway-call metric labels it.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accepted { .. } => "accepted",
        Outcome::Declined { .. } => "declined",
        Outcome::Unavailable { .. } => "unavailable",
        Outcome::Ambiguous { .. } => "ambiguous",
        Outcome::Unknown => "unknown",
    }
}

fn gateway_adapter(
    gateway: &GatewayRecord,
) -> Result<&'static dyn paygate_common::gateway::Gateway, HandlerError> {
    gateway.adapter().ok_or_else(|| {
        HandlerError::transient(anyhow!(
            "gateway {} speaks {}, which this build has no adapter for",
            gateway.code,
            gateway.protocol
        ))
    })
}
