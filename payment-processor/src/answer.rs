//! A gateway's answer, applied. A definite one (accepted, completed, declined) moves
//! the payment through the version fence. When the fence refuses it — another worker,
//! a callback or an operator moved the payment meanwhile — the payment is read again:
//! if it still waits on that gateway the answer is applied to what it is now; if not,
//! the answer is recorded in the payment's history (never dropped), and one that
//! contradicts where the payment stands (charged, but `failed`) flags it for a human.

use paygate_common::domain::{Status, TransactionId};
use paygate_common::gateway::{GatewayRecord, Outcome, PaymentMethod};
use paygate_common::group_commit::Write;
use paygate_common::kafka::HandlerError;
use paygate_common::metrics;
use paygate_common::transactions::{self, Change, TransactionRecord, TransitionError};
use sqlx::PgConnection;

use crate::{PaymentHandler, Step};

/// How often a definite answer is applied again to a payment that changed under it.
const REAPPLY: usize = 3;

impl PaymentHandler {
    /// Acts on a gateway's answer about `transaction`, which names `gateway`.
    pub(crate) async fn apply(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
        outcome: Outcome,
    ) -> Result<Step, HandlerError> {
        match outcome {
            Outcome::Unavailable { reason } | Outcome::Ambiguous { reason } => Ok(Step::Retry {
                reason,
                ambiguous: true,
            }),
            Outcome::Unknown => Ok(Step::Retry {
                reason: format!("{} does not know the payment yet", gateway.code),
                ambiguous: true,
            }),
            definite => {
                self.settle_with(transaction, gateway, &definite).await?;
                Ok(Step::Done)
            }
        }
    }

    /// Applies `gateway`'s definite `outcome` to the payment last seen as `seen`.
    pub(crate) async fn settle_with(
        &self,
        seen: &TransactionRecord,
        gateway: &GatewayRecord,
        outcome: &Outcome,
    ) -> Result<(), HandlerError> {
        let mut current = seen.clone();
        for _ in 0..REAPPLY {
            if !waits_on(&current, gateway, outcome) {
                break;
            }
            // Committed with the other answers of this moment.
            let written = self
                .moves
                .write(Move {
                    seen: current.clone(),
                    gateway: gateway.clone(),
                    outcome: outcome.clone(),
                })
                .await
                .map_err(HandlerError::transient)?;
            match written {
                Ok(None) => return Ok(()),
                Ok(Some(record)) => {
                    self.announce_moved(&record).await;
                    return Ok(());
                }
                Err(error) => {
                    tracing::info!(transaction_id = %seen.id, %error, "changed concurrently; reading it again");
                    current = transactions::find(&self.pool, &seen.id)
                        .await
                        .map_err(HandlerError::transient)?
                        .unwrap_or(current);
                }
            }
        }
        self.record_late(&current, gateway, outcome).await
    }

    /// Keeps a definite answer about a payment that moved on without it: in its
    /// history, and for a human when it contradicts where the payment stands.
    async fn record_late(
        &self,
        current: &TransactionRecord,
        gateway: &GatewayRecord,
        outcome: &Outcome,
    ) -> Result<(), HandlerError> {
        let word = outcome.label();
        let detail = format!(
            "{} answered {word} after the payment had moved on: it is {} at {}",
            gateway.code,
            current.status,
            current.gateway.as_deref().unwrap_or("no gateway")
        );
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        transactions::record_late_answer(&mut tx, current, &detail)
            .await
            .map_err(HandlerError::transient)?;
        if let Some((reason, evidence)) =
            transactions::contradiction(current, &gateway.code, outcome.took_payment(), word)
        {
            transactions::flag_review(&mut tx, &current.id, reason, &evidence)
                .await
                .map_err(HandlerError::transient)?;
        }
        paygate_common::outbox::commit(tx)
            .await
            .map_err(HandlerError::transient)?;
        metrics::late_answer(word);
        tracing::warn!(transaction_id = %current.id, %detail, "late gateway answer recorded");
        Ok(())
    }

    /// Moves the transaction out of `pending` for a reason of Paygate's own (no route,
    /// retries spent); a concurrent change (another worker got there first) is not an
    /// error.
    pub(crate) async fn finish(
        &self,
        seen: &TransactionRecord,
        to: Status,
        change: Change,
    ) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        match transactions::transition(&mut tx, seen, to, change).await {
            Ok(record) => self.moved(tx, &record).await,
            Err(error @ (TransitionError::Stale(_) | TransitionError::NotAllowed { .. })) => {
                tracing::info!(transaction_id = %seen.id, %error, "changed concurrently; leaving it");
                Ok(())
            }
            Err(TransitionError::Database(error)) => Err(HandlerError::transient(error)),
        }
    }

    /// Commits a move out of `pending` (or on to a final status) in `tx`, announcing
    /// the callbacks that overtook the gateway's answer and waited for this moment.
    async fn moved(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        record: &TransactionRecord,
    ) -> Result<(), HandlerError> {
        transactions::announce_parked_callbacks(&mut tx, &record.id)
            .await
            .map_err(HandlerError::transient)?;
        paygate_common::outbox::commit(tx)
            .await
            .map_err(HandlerError::transient)?;
        self.announce_moved(record).await;
        Ok(())
    }

    /// What follows a committed move: the log line, and a card's CVV forgotten.
    async fn announce_moved(&self, record: &TransactionRecord) {
        tracing::info!(transaction_id = %record.id, status = %record.status, version = record.version, "transaction moved");
        self.forget_cvv(record).await;
    }

    /// Authorised or refused: a card's CVV is not kept a moment longer.
    async fn forget_cvv(&self, record: &TransactionRecord) {
        if record.payment_method() == PaymentMethod::Card && record.status != Status::Pending {
            if let Err(error) = self.cvvs.forget(&record.id).await {
                tracing::warn!(transaction_id = %record.id, error = %format!("{error:#}"), "could not delete a CVV; it expires");
            }
        }
    }
}

/// A gateway's definite answer applied to the payment last seen as `seen`: its status
/// changes and the callbacks that waited for them announced, as a write that shares its
/// commit with the other answers of its moment (`group_commit`). A fence that refuses
/// the first change is an output (nothing written); the changes after it cannot be
/// refused, since the first holds the row's lock.
pub(crate) struct Move {
    seen: TransactionRecord,
    gateway: GatewayRecord,
    outcome: Outcome,
}

impl Write for Move {
    type Output = Result<Option<TransactionRecord>, TransitionError>;
    const ONE_STATEMENT: bool = false;

    fn lock_order(&self) -> Option<&str> {
        Some(self.seen.id.as_str())
    }

    async fn write(&self, conn: &mut PgConnection) -> sqlx::Result<Self::Output> {
        Self::write_all(&[self], conn)
            .await
            .map(|mut outputs| outputs.remove(0))
    }

    /// Every move first, then the callbacks parked behind the payments that moved,
    /// looked up for them all at once.
    async fn write_all(
        writes: &[&Self],
        conn: &mut PgConnection,
    ) -> sqlx::Result<Vec<Self::Output>> {
        let mut outputs = Vec::with_capacity(writes.len());
        for write in writes {
            outputs.push(
                match moves(conn, &write.seen, &write.gateway, &write.outcome).await {
                    Err(TransitionError::Database(error)) => return Err(error),
                    moved_refused_or_nothing => moved_refused_or_nothing,
                },
            );
        }
        let moved: Vec<&TransactionId> = outputs
            .iter()
            .filter_map(|output| match output {
                Ok(Some(record)) => Some(&record.id),
                _ => None,
            })
            .collect();
        transactions::announce_parked_callbacks_of(conn, &moved).await?;
        Ok(outputs)
    }
}

/// Whether `record` still waits on `gateway` for an answer like `outcome`: it names the
/// gateway and is pending there, or `processing` there and the answer settles it.
fn waits_on(record: &TransactionRecord, gateway: &GatewayRecord, outcome: &Outcome) -> bool {
    record.gateway.as_deref() == Some(gateway.code.as_str())
        && match record.status {
            Status::Pending => true,
            Status::Processing => outcome.is_definite(),
            Status::Completed | Status::Failed => false,
        }
}

/// The status changes `outcome` makes from `seen`, in the caller's database
/// transaction: `None` when it changes nothing (accepted again while `processing`).
async fn moves(
    conn: &mut sqlx::PgConnection,
    seen: &TransactionRecord,
    gateway: &GatewayRecord,
    outcome: &Outcome,
) -> Result<Option<TransactionRecord>, TransitionError> {
    let named = Some(gateway.code.clone());
    let record = match (seen.status, outcome) {
        (Status::Processing, Outcome::Accepted { .. }) => return Ok(None),
        (Status::Pending, Outcome::Accepted { gateway_txn_id }) => {
            let change = Change {
                gateway: named,
                gateway_txn_id: Some(gateway_txn_id.clone()),
                ..Change::default()
            };
            transactions::transition(conn, seen, Status::Processing, change).await?
        }
        (Status::Pending | Status::Processing, Outcome::Completed { gateway_txn_id }) => {
            let change = Change {
                gateway: named,
                gateway_txn_id: Some(gateway_txn_id.clone()),
                ..Change::default()
            };
            transactions::settle(conn, seen, Status::Completed, change).await?
        }
        (_, Outcome::Declined { reason }) => {
            let change = Change {
                gateway: named,
                failure_reason: Some(reason.clone()),
                ..Change::default()
            };
            transactions::transition(conn, seen, Status::Failed, change).await?
        }
        (from, _) => {
            return Err(TransitionError::NotAllowed {
                from,
                to: Status::Completed,
            })
        }
    };
    Ok(Some(record))
}
