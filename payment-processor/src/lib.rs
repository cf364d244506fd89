//! Paygate's payment-processor: consumes `paygate.payments.requested`, picks gateways by
//! route, and submits the payment to them in order under the transaction's Redis lock,
//! with our transaction id as the gateway-side idempotency reference.
//!
//! - accepted: `pending -> processing`, with the gateway and its transaction id;
//! - declined: `pending -> failed` with the gateway's reason, no other gateway is tried;
//! - unavailable (connect error, 5xx): the next gateway;
//! - ambiguous (no answer after the request went out), or every gateway unavailable:
//!   a transient failure, so the message is retried. Which gateway is being asked is
//!   written down before each request, so a retry after an ambiguous answer or a crash
//!   asks that same gateway again with the same reference (its idempotency makes that
//!   safe) and never another one: a customer is never charged twice. Status queries, a
//!   retry topic with backoff and circuit breakers belong to the gateway-integration work.

pub mod routing;

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use prost::Message;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paygate_common::domain::{Status, TransactionId};
use paygate_common::events::proto;
use paygate_common::gateway::{self, Outcome, PaymentOrder};
use paygate_common::kafka::{Handler, HandlerError, Inbound};
use paygate_common::lock::Locks;
use paygate_common::service::Worker;
use paygate_common::transactions::{self, Change, TransactionRecord, TransitionError};
use paygate_common::Settings;

/// The service: a worker whose handler is [`PaymentHandler`].
pub struct Application {
    worker: Worker,
    handler: PaymentHandler,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let topics = [settings.kafka.topics.payments_requested.as_str()];
        let worker = Worker::build(
            &settings,
            "payment-processor",
            &settings.payment_processor.listen,
            &topics,
        )
        .await?;
        let handler = PaymentHandler {
            pool: worker.pool.clone(),
            locks: Locks::connect(&settings.redis).await?,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .context("building the HTTP client")?,
            callback_base: format!(
                "{}/v1/callbacks",
                settings.api.public_url.trim_end_matches('/')
            ),
        };
        Ok(Application { worker, handler })
    }

    pub fn port(&self) -> u16 {
        self.worker.port()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.worker.run(self.handler, Vec::new(), shutdown).await
    }
}

/// Routes one requested payment.
pub struct PaymentHandler {
    pool: PgPool,
    locks: Locks,
    http: reqwest::Client,
    /// `<api public url>/v1/callbacks`; the gateway code is appended.
    callback_base: String,
}

impl Handler for PaymentHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        let event = proto::PaymentRequested::decode(message.payload.as_slice())
            .map_err(HandlerError::permanent)?;
        let id: TransactionId = event
            .transaction
            .as_ref()
            .map(|t| t.id.as_str())
            .unwrap_or_default()
            .parse()
            .map_err(HandlerError::permanent)?;

        self.locks
            .run_locked(id.as_str(), self.route(&id))
            .await
            .map_err(HandlerError::transient)?
            .unwrap_or_else(|| {
                Err(HandlerError::transient(anyhow!(
                    "transaction {id} is locked by another worker"
                )))
            })
    }
}

impl PaymentHandler {
    async fn route(&self, id: &TransactionId) -> Result<(), HandlerError> {
        let transaction = transactions::find(&self.pool, id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| HandlerError::permanent(anyhow!("transaction {id} does not exist")))?;
        if transaction.status != Status::Pending {
            tracing::info!(transaction_id = %id, status = %transaction.status, "already routed; nothing to do");
            return Ok(());
        }

        // A pending transaction that names a gateway was sent there and never settled
        // (an ambiguous answer, or a crash mid-call): that gateway may have taken it, so
        // it is asked again, with the same reference, and no other gateway is tried.
        let unresolved = match &transaction.gateway {
            Some(code) => gateway::find(&self.pool, code)
                .await
                .map_err(HandlerError::transient)?,
            None => None,
        };
        let resolving = unresolved.is_some();
        let candidates = match unresolved {
            Some(gateway) => vec![gateway],
            None => routing::candidates(&self.pool, &transaction)
                .await
                .map_err(HandlerError::transient)?,
        };
        if candidates.is_empty() {
            let reason = format!(
                "no gateway routes {} {} for country {}",
                transaction.kind,
                transaction.currency,
                transaction.country.as_deref().unwrap_or("(none)")
            );
            return self
                .settle(
                    &transaction,
                    Status::Failed,
                    Change {
                        failure_reason: Some(reason),
                        ..Change::default()
                    },
                )
                .await;
        }

        let mut unavailable = Vec::new();
        for gateway in &candidates {
            if !resolving {
                self.record_attempt(&transaction, &gateway.code).await?;
            }
            let order = PaymentOrder {
                reference: transaction.id.to_string(),
                amount: transaction.amount,
                currency: transaction.currency.clone(),
                kind: transaction.kind,
                country: transaction.country.clone(),
                callback_url: format!("{}/{}", self.callback_base, gateway.code),
            };
            let outcome = gateway::submit(&self.http, gateway, &order).await;
            tracing::info!(transaction_id = %id, gateway = %gateway.code, ?outcome, "gateway answered");
            match outcome {
                Outcome::Accepted { gateway_txn_id } => {
                    let change = Change {
                        gateway: Some(gateway.code.clone()),
                        gateway_txn_id: Some(gateway_txn_id),
                        ..Change::default()
                    };
                    return self.settle(&transaction, Status::Processing, change).await;
                }
                Outcome::Declined { reason } => {
                    let change = Change {
                        gateway: Some(gateway.code.clone()),
                        failure_reason: Some(reason),
                        ..Change::default()
                    };
                    return self.settle(&transaction, Status::Failed, change).await;
                }
                Outcome::Unavailable { reason } if resolving => {
                    return Err(HandlerError::transient(anyhow!(
                        "cannot settle the earlier attempt yet: {reason}"
                    )));
                }
                Outcome::Unavailable { reason } => unavailable.push(reason),
                Outcome::Ambiguous { reason } => {
                    // The gateway may have taken it: never try another one blindly.
                    return Err(HandlerError::transient(anyhow!(
                        "ambiguous answer: {reason}"
                    )));
                }
            }
        }
        Err(HandlerError::transient(anyhow!(
            "every gateway is unavailable: {}",
            unavailable.join("; ")
        )))
    }

    /// Notes, before the request goes out, which gateway is being asked: if we then die
    /// or hear nothing clear, the retry asks that gateway again and no other. Not a
    /// status change, so no version and no event.
    async fn record_attempt(
        &self,
        transaction: &TransactionRecord,
        gateway: &str,
    ) -> Result<(), HandlerError> {
        let recorded = sqlx::query(
            "UPDATE transaction SET gateway = $3, updated_at = now()
              WHERE id = $1 AND version = $2 AND status = 'pending'",
        )
        .bind(transaction.id.as_str())
        .bind(transaction.version)
        .bind(gateway)
        .execute(&self.pool)
        .await
        .map_err(HandlerError::transient)?;
        if recorded.rows_affected() == 0 {
            return Err(HandlerError::transient(anyhow!(
                "transaction {} changed while it was being routed",
                transaction.id
            )));
        }
        Ok(())
    }

    /// Applies the routing result; a concurrent change (another worker got there first)
    /// is not an error.
    async fn settle(
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
                Ok(())
            }
            Err(error @ (TransitionError::Stale(_) | TransitionError::NotAllowed { .. })) => {
                tracing::info!(transaction_id = %seen.id, %error, "changed concurrently; leaving it");
                Ok(())
            }
            Err(TransitionError::Database(error)) => Err(HandlerError::transient(error)),
        }
    }
}
