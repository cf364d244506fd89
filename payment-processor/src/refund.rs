//! Refunds, under the same rules as payments. A refund is asked of the gateway that
//! charged its payment and of no other, with the refund's id as its idempotency
//! reference, under the refund's Redis lock and behind its version fence:
//! - before each request the attempt is written on the refund with a version bump, so
//!   a worker whose write is refused asks nobody;
//! - a definite answer (refunded, pending there, declined) moves the refund, as does
//!   the gateway's callback (through the callback-processor); one taken and pending
//!   there (`processing`) waits for that callback, and the refund sweep asks about it
//!   once it is stale;
//! - a gateway that proves it took nothing (`503`, a refused connection) is asked again
//!   later; after the last retry the refund is `failed` and its hold on the payment
//!   given back;
//! - an ambiguous answer (a timeout after sending, a `5xx`, an unreadable body) means
//!   the gateway may have paid it: from then on it is asked by status query, and sent
//!   again — same reference, so the gateway refunds it at most once — only when the
//!   gateway says it does not know it after its settle window. It is never `failed` for
//!   want of an answer: after the last retry it stays open, marked unresolved, on the
//!   dead-letter topic, and the refund sweep keeps asking.

use std::time::Duration;

use anyhow::anyhow;
use chrono::Utc;
use prost::Message;
use tokio_util::sync::CancellationToken;

use paygate_common::domain::{EventId, RefundId, Status};
use paygate_common::events::proto;
use paygate_common::gateway::{GatewayRecord, Outcome, RefundOrder};
use paygate_common::kafka::{Envelope, HandlerError, Inbound};
use paygate_common::refunds::{self, RefundChange, RefundRecord, RefundTransitionError};
use paygate_common::retry::full_jitter;
use paygate_common::transactions;

use crate::call::gateway_adapter;
use crate::{PaymentHandler, Step, RETRY_EVENT};

/// How often a definite answer is applied again to a refund that changed under it.
const REAPPLY: usize = 3;

/// Refunds asked about per sweep round, at most.
const BATCH: i64 = 100;

impl PaymentHandler {
    /// Settles what it can of the refund `id`, then schedules what is left: the refund
    /// counterpart of the payment handler's `handle`.
    pub(crate) async fn handle_refund(
        &self,
        id: &RefundId,
        attempt: u32,
        message: &Inbound,
    ) -> Result<(), HandlerError> {
        match self.refund_locked(id).await? {
            Step::Done => Ok(()),
            Step::Retry { reason, ambiguous } => {
                self.retry_refund_later(id, attempt, &reason, ambiguous, message)
                    .await
            }
        }
    }

    /// Settles what it can of the refund under its lock.
    async fn refund_locked(&self, id: &RefundId) -> Result<Step, HandlerError> {
        self.locks
            .run_locked(id.as_str(), self.settle_refund(id))
            .await
            .map_err(HandlerError::transient)?
            .unwrap_or_else(|| {
                Err(HandlerError::transient(anyhow!(
                    "refund {id} is locked by another worker"
                )))
            })
    }

    async fn settle_refund(&self, id: &RefundId) -> Result<Step, HandlerError> {
        let refund = refunds::find(&self.pool, id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| HandlerError::permanent(anyhow!("refund {id} does not exist")))?;
        if refund.status.is_final() {
            tracing::info!(refund_id = %id, status = %refund.status, "refund already settled");
            return Ok(Step::Done);
        }
        // Once asked, the gateway may hold it: nothing but its word settles it.
        let asked = refund.attempted_at.is_some() || refund.status == Status::Processing;
        let Some(gateway) = self.routes.snapshot().gateway(&refund.gateway).cloned() else {
            return Ok(retry(
                format!("gateway {} is not configured", refund.gateway),
                asked,
            ));
        };
        if !self.breakers.permit(&gateway.code) {
            return Ok(retry(format!("{}: circuit open", gateway.code), asked));
        }
        if asked {
            let outcome = self.ask_refund(&refund, &gateway).await?;
            if outcome.is_definite() {
                return self.apply_refund(&refund, &outcome).await;
            }
            let unknown_long_enough = outcome == Outcome::Unknown
                && refund.status == Status::Pending
                && !within_settle_window(&refund, &gateway);
            if !unknown_long_enough {
                if refund.status == Status::Processing {
                    // Taken there: its callback or the refund sweep's next query settles
                    // it, not a retry that would run out.
                    return Ok(Step::Done);
                }
                return Ok(retry(
                    format!(
                        "{} gave no definite answer about the refund: {}",
                        gateway.code,
                        outcome.label()
                    ),
                    true,
                ));
            }
        }
        self.send_refund(&refund, &gateway).await
    }

    /// Sends the refund to its gateway, fenced: the attempt is written first.
    async fn send_refund(
        &self,
        refund: &RefundRecord,
        gateway: &GatewayRecord,
    ) -> Result<Step, HandlerError> {
        let payment = transactions::find(&self.pool, &refund.transaction_id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| {
                HandlerError::permanent(anyhow!("refund {} has no payment", refund.id))
            })?;
        let attempt = {
            let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
            match refunds::record_attempt(&mut tx, refund).await {
                Ok(attempt) => {
                    tx.commit().await.map_err(HandlerError::transient)?;
                    attempt
                }
                Err(RefundTransitionError::Database(error)) => {
                    return Err(HandlerError::transient(error))
                }
                Err(error) => {
                    tracing::info!(refund_id = %refund.id, %error, "moved by someone else; asking nobody");
                    return Ok(Step::Done);
                }
            }
        };
        let order = RefundOrder {
            reference: attempt.id.to_string(),
            payment_reference: payment.id.to_string(),
            gateway_txn_id: payment.gateway_txn_id.clone(),
            amount: attempt.amount,
            currency: attempt.currency.clone(),
            callback_url: format!("{}/{}", self.callback_base, gateway.code),
        };
        let outcome = self
            .call(gateway, "refund", |call| {
                let order = &order;
                async move { Ok(gateway_adapter(call.gateway)?.refund(call, order).await) }
            })
            .await?;
        tracing::info!(refund_id = %attempt.id, gateway = %gateway.code, ?outcome, "gateway answered the refund");
        match outcome {
            Outcome::Unavailable { reason } if refund.attempted_at.is_none() => {
                // Proven not taken, and no earlier attempt may be held there.
                let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
                match refunds::release_attempt(&mut tx, &attempt).await {
                    Ok(_) => tx.commit().await.map_err(HandlerError::transient)?,
                    Err(RefundTransitionError::Database(error)) => {
                        return Err(HandlerError::transient(error))
                    }
                    Err(_) => return Ok(Step::Done),
                }
                Ok(retry(reason, false))
            }
            definite if definite.is_definite() => self.apply_refund(&attempt, &definite).await,
            other => Ok(retry(
                format!(
                    "{} gave no definite answer: {}",
                    gateway.code,
                    other.label()
                ),
                true,
            )),
        }
    }

    /// Asks the gateway what became of the refund.
    async fn ask_refund(
        &self,
        refund: &RefundRecord,
        gateway: &GatewayRecord,
    ) -> Result<Outcome, HandlerError> {
        let reference = refund.id.to_string();
        let outcome = self
            .call(gateway, "query_refund", |call| {
                let reference = &reference;
                async move {
                    Ok(gateway_adapter(call.gateway)?
                        .query_refund(call, reference)
                        .await)
                }
            })
            .await?;
        tracing::info!(refund_id = %refund.id, gateway = %gateway.code, ?outcome, "refund status answered");
        Ok(outcome)
    }

    /// Applies the gateway's definite `outcome` to the refund last seen as `seen`.
    async fn apply_refund(
        &self,
        seen: &RefundRecord,
        outcome: &Outcome,
    ) -> Result<Step, HandlerError> {
        let mut current = seen.clone();
        for _ in 0..REAPPLY {
            let (to, change) = match (current.status, outcome) {
                (Status::Processing, Outcome::Accepted { .. }) => return Ok(Step::Done),
                (Status::Pending, Outcome::Accepted { gateway_txn_id }) => (
                    Status::Processing,
                    RefundChange {
                        gateway_refund_id: Some(gateway_txn_id.clone()),
                        ..RefundChange::default()
                    },
                ),
                (_, Outcome::Completed { gateway_txn_id }) => (
                    Status::Completed,
                    RefundChange {
                        gateway_refund_id: Some(gateway_txn_id.clone()),
                        ..RefundChange::default()
                    },
                ),
                (_, Outcome::Declined { reason }) => (
                    Status::Failed,
                    RefundChange {
                        failure_reason: Some(reason.clone()),
                        ..RefundChange::default()
                    },
                ),
                _ => return Ok(Step::Done),
            };
            if current.status.is_final() {
                if current.status != to {
                    tracing::warn!(refund_id = %current.id, status = %current.status, answer = outcome.label(), "a gateway's answer contradicts a settled refund");
                }
                return Ok(Step::Done);
            }
            let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
            match refunds::settle(&mut tx, &current, to, change).await {
                Ok(moved) => {
                    tx.commit().await.map_err(HandlerError::transient)?;
                    tracing::info!(refund_id = %moved.id, status = %moved.status, version = moved.version, "refund moved");
                    // Final, or taken and `processing` there: its callback, or the
                    // refund sweep's status query once it is stale, settles it.
                    return Ok(Step::Done);
                }
                Err(RefundTransitionError::Database(error)) => {
                    return Err(HandlerError::transient(error))
                }
                Err(error) => {
                    drop(tx);
                    tracing::info!(refund_id = %seen.id, %error, "refund changed concurrently; reading it again");
                    current = refunds::find(&self.pool, &seen.id)
                        .await
                        .map_err(HandlerError::transient)?
                        .unwrap_or(current);
                }
            }
        }
        Ok(Step::Done)
    }

    /// Schedules attempt `attempt + 1` on the retry topic, or, when the attempts ran
    /// out, ends the refund's automatic retries: failed (its gateway proved it took
    /// nothing) or unresolved (it may hold it), and copied to the dead-letter topic.
    async fn retry_refund_later(
        &self,
        id: &RefundId,
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
            let due = Utc::now().timestamp_millis()
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
            tracing::info!(refund_id = %id, attempt, ?delay, %reason, "refund retry scheduled");
            return Ok(());
        }
        let reason = if ambiguous {
            let reason = format!("unresolved after {attempt} attempts: {reason}");
            refunds::mark_unresolved(&self.pool, id, &reason)
                .await
                .map_err(HandlerError::transient)?;
            reason
        } else {
            let reason = format!("failed after {attempt} attempts: {reason}");
            self.fail_refund(id, &reason).await?;
            reason
        };
        tracing::warn!(refund_id = %id, %reason, "refund retries exhausted; dead-lettering");
        self.producer
            .dead_letter(message, &reason)
            .await
            .map_err(HandlerError::transient)
    }

    /// Fails a refund its gateway never took (no attempt there may be held).
    async fn fail_refund(&self, id: &RefundId, reason: &str) -> Result<(), HandlerError> {
        let Some(refund) = refunds::find(&self.pool, id)
            .await
            .map_err(HandlerError::transient)?
            .filter(|r| r.status == Status::Pending && r.attempted_at.is_none())
        else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        let change = RefundChange {
            failure_reason: Some(reason.to_owned()),
            ..RefundChange::default()
        };
        match refunds::transition(&mut tx, &refund, Status::Failed, change).await {
            Ok(_) => tx.commit().await.map_err(HandlerError::transient),
            Err(RefundTransitionError::Database(error)) => Err(HandlerError::transient(error)),
            Err(error) => {
                tracing::info!(refund_id = %id, %error, "changed concurrently; leaving it");
                Ok(())
            }
        }
    }

    /// Takes up one open refund without progress, as if its message had just arrived;
    /// what does not settle it is noted on it for a human.
    pub async fn recheck_refund(&self, id: &RefundId) -> anyhow::Result<()> {
        let reason = match self.refund_locked(id).await {
            Ok(Step::Done) => "taken by its gateway, which has not settled it".to_owned(),
            Ok(Step::Retry { reason, .. }) => reason,
            Err(HandlerError::Permanent(error) | HandlerError::Transient(error)) => {
                return Err(error)
            }
        };
        // Only a refund still open is noted (mark_unresolved skips a settled one).
        refunds::mark_unresolved(&self.pool, id, &format!("no progress: {reason}")).await?;
        Ok(())
    }
}

/// Every `every`, takes up the open refunds unchanged for `stale` (a lost message, a
/// gateway that never settled one it took), until `shutdown`.
pub async fn sweep(
    handler: PaymentHandler,
    every: Duration,
    stale: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let due = match refunds::open_due(&handler.pool, stale, BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "could not list the refunds due");
                continue;
            }
        };
        for id in due {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(error) = handler.recheck_refund(&id).await {
                tracing::warn!(refund_id = %id, error = %format!("{error:#}"), "refund sweep failed");
            }
        }
    }
}

/// Whether the gateway's "unknown reference" about `refund` is still no answer.
fn within_settle_window(refund: &RefundRecord, gateway: &GatewayRecord) -> bool {
    let attempted = refund.attempted_at.unwrap_or(refund.updated_at);
    let age = (Utc::now() - attempted).to_std().unwrap_or_default();
    age < gateway.settle_window()
}

fn retry(reason: String, ambiguous: bool) -> Step {
    Step::Retry { reason, ambiguous }
}
