//! Paygate's callback-processor: consumes `paygate.gateway.callbacks`, reads the stored
//! callback through its gateway's adapter, and applies it to the transaction with a
//! version-checked update, under the row locks of the callback and the transaction
//! (`SELECT … FOR NO KEY UPDATE`, one statement) held until the outcome is committed. It takes
//! no Redis lock: its whole effect is that one database transaction, so the row locks
//! already serialize two workers on one callback (the second finds it processed) or on
//! one transaction (each judges the row as the other left it), and a Redis lock would
//! only add two round trips per callback.
//!
//! - a result for a `processing` transaction moves it to `completed` or `failed`;
//! - one from the gateway that holds an unresolved `pending` payment (its attempt there
//!   never got a definite answer) is that gateway's definite word: it settles it;
//! - a duplicate of a final state changes nothing and is kept as `ignored`;
//! - one that contradicts where the payment stands — charged, but Paygate has it
//!   `failed`; charged at a gateway the payment has left — changes no status and is kept
//!   as a `contradiction`: the payment is flagged for a human (`review`), the merchant is
//!   told by a `transaction.review_required` webhook;
//! - one whose amount, currency or reference disagrees with the transaction, or from a
//!   gateway the payment was never offered to (its history knows every attempt), is
//!   `rejected` and kept, and the transaction is left alone;
//! - one that overtook the processor (the transaction is still `pending`) is parked:
//!   left unprocessed, and announced again by the payment-processor in the database
//!   transaction that moves the transaction out of `pending`. The choice is made under
//!   the transaction's row lock (`SELECT … FOR NO KEY UPDATE`), held until the outcome is
//!   committed, and that move is an UPDATE which waits for it: one side always sees the
//!   other's commit, whatever Redis does;
//! - one that can never be read is kept as `rejected` with the reason and copied to the
//!   dead-letter topic;
//! - one about a refund (see [`refund`]) settles that refund, under the same rules.
//!
//! The callbacks in flight at one moment are applied together (`kafka::batch`): one
//! database transaction, each callback under its own rows' locks, their outcomes
//! written in one statement, one commit. A batch that fails is rolled back and each of
//! its callbacks applied alone, so one bad callback never holds up or doubles another.

use anyhow::anyhow;
use prost::Message;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use paygate_common::domain::{CallbackId, Status, TransactionId};
use paygate_common::events::proto;
use paygate_common::gateway::{self, CallbackNotice, CallbackResult, GatewayCache, GatewayRecord};
use paygate_common::kafka::{BatchHandler, Batched, HandlerError, Inbound, Producer};
use paygate_common::service::{Listen, Worker};
use paygate_common::transactions::{self, Change, TransactionRecord, TransitionError};
use paygate_common::Settings;

pub struct Application {
    worker: Worker,
    handler: Batched<CallbackHandler>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let topics = [settings.kafka.topics.gateway_callbacks.as_str()];
        let worker = Worker::build(
            &settings,
            "callback-processor",
            Listen {
                health: &settings.callback_processor.listen,
                metrics: &settings.callback_processor.metrics_listen,
            },
            &topics,
        )
        .await?;
        let handler = Batched::new(
            CallbackHandler {
                pool: worker.pool.clone(),
                dead_letters: Producer::new(&settings.kafka)?,
                gateways: GatewayCache::default(),
            },
            settings.kafka.max_in_flight,
            paygate_common::batch::AT_ONCE,
        );
        Ok(Application { worker, handler })
    }

    pub fn port(&self) -> u16 {
        self.worker.port()
    }

    /// The port of its `/metrics`.
    pub fn metrics_port(&self) -> u16 {
        self.worker.metrics_port()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.worker.run(self.handler, Vec::new(), shutdown).await
    }
}

/// Applies one stored callback.
pub struct CallbackHandler {
    pool: PgPool,
    /// Copies callbacks that can never be read to the dead-letter topic.
    dead_letters: Producer,
    /// The gateways, whose adapters read the callbacks.
    gateways: GatewayCache,
}

mod refund;

/// What became of a callback, as recorded on its inbox row.
enum Verdict {
    Applied,
    Ignored(String),
    Rejected(String),
    /// It contradicts where the payment stands: `(review reason, evidence)`.
    Contradiction(&'static str, String),
}

/// One callback to apply, as read from its message.
pub struct Received {
    callback_id: CallbackId,
    transaction_id: TransactionId,
    gateway: GatewayRecord,
    message: Inbound,
    /// The message's span: what is logged of this callback in its batch carries its
    /// trace.
    span: tracing::Span,
}

/// What a callback became, written on its inbox row.
struct Outcome {
    callback_id: String,
    outcome: &'static str,
    reason: Option<String>,
}

impl BatchHandler for CallbackHandler {
    type Item = Received;

    async fn prepare(&self, message: &Inbound) -> Result<Option<Received>, HandlerError> {
        let event = proto::CallbackReceived::decode(message.payload.as_slice())
            .map_err(HandlerError::permanent)?;
        let callback_id: CallbackId = event.callback_id.parse().map_err(HandlerError::permanent)?;
        let transaction_id: TransactionId = event
            .transaction_id
            .parse()
            .map_err(HandlerError::permanent)?;

        // Read before the database transaction begins: the cache may need a connection
        // of its own, which must never be waited for while one is held.
        let gateway = self
            .gateways
            .find(&self.pool, &event.gateway)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| HandlerError::permanent(anyhow!("gateway {} is gone", event.gateway)))?;
        Ok(Some(Received {
            callback_id,
            transaction_id,
            gateway,
            message: message.clone(),
            span: tracing::Span::current(),
        }))
    }

    /// The callbacks of a batch in one database transaction: each under its rows'
    /// locks, their outcomes written in one statement, committed once.
    async fn apply(&self, batch: &[Received]) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        // In the order of their payments, as every batch that locks payments takes them
        // (`group_commit::Write::lock_order`): two batches never wait for each other in
        // a circle.
        let mut ordered: Vec<&Received> = batch.iter().collect();
        ordered.sort_by_key(|received| received.transaction_id.as_str());
        for received in ordered {
            let applied = self
                .apply_one(&mut tx, received)
                .instrument(received.span.clone())
                .await?;
            if let Some(outcome) = applied {
                outcomes.push(outcome);
            }
        }
        if !outcomes.is_empty() {
            sqlx::query(
                "UPDATE gateway_callback c
                    SET processed_at = now(), outcome = o.outcome, outcome_reason = o.reason
                   FROM unnest($1::text[], $2::text[], $3::text[]) AS o(id, outcome, reason)
                  WHERE c.id = o.id",
            )
            .bind(
                outcomes
                    .iter()
                    .map(|o| o.callback_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(outcomes.iter().map(|o| o.outcome).collect::<Vec<_>>())
            .bind(
                outcomes
                    .iter()
                    .map(|o| o.reason.as_deref())
                    .collect::<Vec<_>>(),
            )
            // Planned for the table as it is now: a plan kept from a fresh database
            // joins the batch to a sequential scan of every callback ever received.
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::transient)?;
        }
        paygate_common::outbox::commit(tx)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

impl CallbackHandler {
    /// Judges one callback under its rows' locks and applies what it says; what became
    /// of it, or `None` when it stays unprocessed (done before, or parked).
    async fn apply_one(
        &self,
        tx: &mut PgConnection,
        received: &Received,
    ) -> Result<Option<Outcome>, HandlerError> {
        let Received {
            callback_id,
            transaction_id,
            gateway,
            message,
            span: _,
        } = received;
        // The row locks, held until the outcome is committed, are what decide "park or
        // apply": the payment-processor moves the transaction out of `pending` (and
        // announces parked callbacks) with an UPDATE that waits for them.
        let stored = transactions::callback_for_update(&mut *tx, callback_id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| {
                HandlerError::permanent(anyhow!("callback {callback_id} is not stored"))
            })?;
        if stored.processed_at.is_some() {
            tracing::info!(%callback_id, "callback already processed");
            return Ok(None);
        }
        if stored.transaction.id != *transaction_id {
            return Err(HandlerError::permanent(anyhow!(
                "callback {callback_id} is not about {transaction_id}"
            )));
        }
        if stored.gateway != gateway.code {
            return Err(HandlerError::permanent(anyhow!(
                "callback {callback_id} is not from {}",
                gateway.code
            )));
        }
        let transaction = stored.transaction;

        // The original shape (see `gateway::legacy`) is read against its transaction;
        // everything else by the gateway's adapter.
        let parsed = match gateway.adapter() {
            _ if stored.content_type == gateway::legacy::CONTENT_TYPE => {
                gateway::legacy::parse(&stored.body, &transaction).map_err(|e| e.to_string())
            }
            Some(adapter) => adapter
                .parse_callback(&stored.body)
                .map_err(|e| e.to_string()),
            None => Err(format!("no adapter speaks {}", gateway.protocol)),
        };
        let verdict = match (parsed, stored.refund_id.as_deref()) {
            (Err(error), _) => {
                // It can never be read: kept as rejected, and a copy with the reason on
                // the dead-letter topic for operators (before the commit, so a failed
                // copy is retried with the rest).
                let reason = format!("unreadable callback from {}: {error}", gateway.code);
                self.dead_letters
                    .dead_letter(message, &reason)
                    .await
                    .map_err(HandlerError::transient)?;
                Verdict::Rejected(error)
            }
            (Ok(notice), Some(refund_id)) => {
                refund::apply(&mut *tx, refund_id, &gateway.code, &notice).await?
            }
            (Ok(notice), None) => match judge(&transaction, &gateway.code, &notice) {
                Judgement::Apply(to, change) => {
                    match transactions::settle(&mut *tx, &transaction, to, change).await {
                        Ok(record) => {
                            tracing::info!(%transaction_id, status = %record.status, version = record.version, "callback applied");
                            Verdict::Applied
                        }
                        Err(TransitionError::Database(error)) => {
                            return Err(HandlerError::transient(error))
                        }
                        // Changed between our read and our write despite the row lock:
                        // read again and judge afresh.
                        Err(error) => return Err(HandlerError::transient(error)),
                    }
                }
                Judgement::Keep(Verdict::Contradiction(reason, evidence)) => {
                    transactions::flag_review(&mut *tx, transaction_id, reason, &evidence)
                        .await
                        .map_err(HandlerError::transient)?;
                    Verdict::Contradiction(reason, evidence)
                }
                Judgement::Keep(verdict) => verdict,
                Judgement::Park => {
                    tracing::info!(%callback_id, %transaction_id, "callback overtook the gateway's answer; parked");
                    return Ok(None);
                }
            },
        };
        let (outcome, reason) = match verdict {
            Verdict::Applied => ("applied", None),
            Verdict::Ignored(reason) => ("ignored", Some(reason)),
            Verdict::Rejected(reason) => ("rejected", Some(reason)),
            Verdict::Contradiction(_, evidence) => ("contradiction", Some(evidence)),
        };
        if let Some(reason) = &reason {
            tracing::warn!(%callback_id, %transaction_id, outcome, reason, "callback not applied");
        }
        Ok(Some(Outcome {
            callback_id: callback_id.as_str().to_owned(),
            outcome,
            reason,
        }))
    }
}

enum Judgement {
    /// The final status it reports (reached from `pending` through `processing`).
    Apply(Status, Change),
    Keep(Verdict),
    /// The callback overtook the gateway's answer: the transaction is still `pending`.
    /// It stays unprocessed, and the payment-processor announces it again when the
    /// transaction leaves `pending` (or is marked unresolved).
    Park,
}

/// Decides what a callback does to a transaction, without touching anything.
fn judge(transaction: &TransactionRecord, gateway: &str, notice: &CallbackNotice) -> Judgement {
    let mismatch = if notice.reference != transaction.id.as_str() {
        Some(format!(
            "reference {} is not {}",
            notice.reference, transaction.id
        ))
    } else if notice.amount != transaction.amount {
        Some(format!(
            "amount {} is not {}",
            notice.amount, transaction.amount
        ))
    } else if notice.currency != transaction.currency {
        Some(format!(
            "currency {} is not {}",
            notice.currency, transaction.currency
        ))
    } else if !transaction.was_offered_to(gateway) {
        Some(format!("gateway {gateway} was never offered this payment"))
    } else {
        None
    };
    if let Some(reason) = mismatch {
        return Judgement::Keep(Verdict::Rejected(reason));
    }

    let (to, change, word) = match &notice.result {
        CallbackResult::Approved => (
            Status::Completed,
            Change {
                gateway_txn_id: notice.gateway_txn_id.clone(),
                ..Change::default()
            },
            "approved",
        ),
        CallbackResult::Declined { reason } => (
            Status::Failed,
            Change {
                gateway_txn_id: notice.gateway_txn_id.clone(),
                failure_reason: Some(reason.clone()),
                ..Change::default()
            },
            "declined",
        ),
    };
    let here = transaction.gateway.as_deref() == Some(gateway);
    match transaction.status {
        Status::Processing if here => Judgement::Apply(to, change),
        Status::Pending if here && transaction.unresolved_since.is_none() => Judgement::Park,
        // The gateway that holds an unresolved payment gives its definite word
        // (`transactions::settle` takes it through `processing` to a completion).
        Status::Pending if here => Judgement::Apply(to, change),
        status if status == to && here => {
            Judgement::Keep(Verdict::Ignored("duplicate: already in that state".into()))
        }
        _ => match transactions::contradiction(transaction, gateway, to == Status::Completed, word)
        {
            Some((reason, evidence)) => Judgement::Keep(Verdict::Contradiction(reason, evidence)),
            None => Judgement::Keep(Verdict::Ignored(format!(
                "the payment is {} at {}; {gateway} says {word}",
                transaction.status,
                transaction.gateway.as_deref().unwrap_or("no gateway")
            ))),
        },
    }
}
