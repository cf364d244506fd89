//! Waiting is never done in a handler: a payment to retry is produced to the retry
//! topic with a due time (exponential backoff, full jitter) and its message committed;
//! the consumer holds the retry until due without holding anything else. When the
//! attempts run out, a payment whose gateways were all down is `failed` and copied to
//! the dead-letter topic with the reason; one still ambiguous is never failed (the
//! gateway may hold the money): it stays pending, marked unresolved with the reason,
//! goes to the dead-letter topic for operators, and [`crate::reconcile`] asks its
//! gateway again on a slow schedule.

use anyhow::anyhow;
use prost::Message;

use paygate_common::domain::{EventId, Status, TransactionId};
use paygate_common::events::proto;
use paygate_common::kafka::{Envelope, HandlerError, Inbound};
use paygate_common::retry::full_jitter;
use paygate_common::transactions;

use crate::{PaymentHandler, Step, RETRY_EVENT};

impl PaymentHandler {
    /// Schedules attempt `attempt + 1` on the retry topic, or, when the attempts ran
    /// out, ends the payment's automatic retries: failed (all gateways down) or
    /// unresolved (ambiguous), and copied to the dead-letter topic with the reason.
    pub(crate) async fn retry_later(
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
            let reason = format!(
                "unresolved after {attempt} attempts, left pending at its gateway: {reason}"
            );
            self.mark_unresolved(id, &reason).await?;
            reason
        } else {
            let reason = format!("failed after {attempt} attempts: {reason}");
            if let Some(transaction) = transactions::find(&self.pool, id)
                .await
                .map_err(HandlerError::transient)?
                .filter(|t| t.status == Status::Pending && t.gateway.is_none())
            {
                self.fail(&transaction, reason.clone()).await?;
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
            self.mark_unresolved(id, &reason)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            tracing::info!(transaction_id = %id, %reason, "still unresolved");
        }
        Ok(())
    }

    /// Marks a pending payment unresolved with `reason`, so it is listed for operators
    /// and asked about again (see [`transactions::mark_unresolved`]).
    pub(crate) async fn mark_unresolved(
        &self,
        id: &TransactionId,
        reason: &str,
    ) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        transactions::mark_unresolved(&mut tx, id, reason)
            .await
            .map_err(HandlerError::transient)?;
        paygate_common::outbox::commit(tx)
            .await
            .map_err(HandlerError::transient)
    }
}
