//! Nothing waits in silence.
//! - [`run`]: payments left unresolved at a gateway (pending, their retries spent without
//!   a definite answer) are never failed, since the gateway may hold the money. Their
//!   gateway is asked again on a slow schedule, so a late answer settles them without an
//!   operator; a late callback settles them too, through the callback-processor.
//! - [`chase`]: a `processing` payment waits for its gateway's callback. Once its
//!   gateway's callback deadline passed it is asked by status query, with backoff (the
//!   deadline, doubled each time, at most an hour apart); a definite answer settles it
//!   (one event, one webhook). Still unsettled after the gateway's `review_after`, it is
//!   flagged `no_callback` for a human, and still asked about.
//! - [`sweep`]: any payment `pending` without progress for `stale_pending_ms`, whatever
//!   its flags (its message lost, its event set aside, a crash at the wrong moment), is
//!   taken up again as if its message had just arrived; if that does not settle it, it
//!   is marked unresolved with the reason, so it is listed for a human.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use paygate_common::domain::{Status, TransactionId};
use paygate_common::gateway::Outcome;
use paygate_common::kafka::HandlerError;
use paygate_common::trace::TraceContext;
use paygate_common::transactions::{self, review};

use crate::PaymentHandler;

/// Payments asked about per round, at most.
const BATCH: i64 = 100;

/// Every `every`, asks about the unresolved payments not asked about for that long.
pub async fn run(handler: PaymentHandler, every: Duration, shutdown: CancellationToken) {
    rounds(
        every,
        &shutdown,
        "recheck",
        || async { transactions::unresolved_due(&handler.pool, every, BATCH).await },
        |id| {
            let handler = &handler;
            async move { handler.recheck(&id).await }
        },
    )
    .await;
}

/// Every `every`, asks about the `processing` payments whose callback is overdue.
pub async fn chase(handler: PaymentHandler, every: Duration, shutdown: CancellationToken) {
    rounds(
        every,
        &shutdown,
        "chase",
        || async { transactions::processing_due(&handler.pool, BATCH).await },
        |id| {
            let handler = &handler;
            async move { handler.chase(&id).await }
        },
    )
    .await;
}

/// Every `every`, takes up again the pending payments without progress for
/// `stale`.
pub async fn sweep(
    handler: PaymentHandler,
    every: Duration,
    stale: Duration,
    shutdown: CancellationToken,
) {
    rounds(
        every,
        &shutdown,
        "sweep",
        || async { transactions::stale_pending(&handler.pool, stale, BATCH).await },
        |id| {
            let handler = &handler;
            async move { handler.sweep(&id, stale).await }
        },
    )
    .await;
}

/// Every `every`, lists the payments `due` and works on each with `work`, inside its
/// trace, until `shutdown`.
async fn rounds<L, LF, W, WF>(
    every: Duration,
    shutdown: &CancellationToken,
    name: &'static str,
    due: L,
    work: W,
) where
    L: Fn() -> LF,
    LF: Future<Output = sqlx::Result<Vec<TransactionId>>>,
    W: Fn(TransactionId) -> WF,
    WF: Future<Output = anyhow::Result<()>>,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let due = match due().await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, round = name, "could not list the payments due");
                continue;
            }
        };
        for id in due {
            if shutdown.is_cancelled() {
                return;
            }
            let trace = TraceContext::for_transaction(id.as_str());
            let span = tracing::info_span!(
                "reconcile",
                round = name,
                transaction_id = %id,
                trace_id = trace.map(|c| c.trace_id()).as_deref(),
            );
            let worked = work(id.clone()).instrument(span);
            let worked = match trace {
                Some(context) => context.scope(worked).await,
                None => worked.await,
            };
            if let Err(error) = worked {
                tracing::warn!(transaction_id = %id, round = name, error = %format!("{error:#}"), "could not ask about a payment");
            }
        }
    }
}

/// The longest wait between two status queries about one `processing` payment.
const LONGEST_CHECK_INTERVAL: Duration = Duration::from_secs(3_600);

impl PaymentHandler {
    /// Takes up again one pending payment that made no progress for `stale`; when
    /// that does not settle it, marks it unresolved with the reason.
    pub async fn sweep(&self, id: &TransactionId, stale: Duration) -> anyhow::Result<()> {
        let why = match self.settle_locked(id).await {
            Ok(crate::Step::Done) => return Ok(()),
            Ok(crate::Step::Retry { reason, .. }) => reason,
            Err(HandlerError::Permanent(error)) => format!("a permanent error: {error:#}"),
            Err(HandlerError::Transient(error)) => return Err(error),
        };
        let reason = format!("no progress for {} s: {why}", stale.as_secs());
        self.mark_unresolved(id, &reason)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        tracing::warn!(transaction_id = %id, %reason, "a stale payment is listed for a human");
        Ok(())
    }

    /// Asks the gateway about one `processing` payment whose callback is overdue, under
    /// the payment's lock (skipped this round when someone else holds it).
    pub async fn chase(&self, id: &TransactionId) -> anyhow::Result<()> {
        let chased = self
            .locks
            .run_locked(id.as_str(), self.chase_locked(id))
            .await?;
        match chased {
            None | Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(anyhow!("{error}")),
        }
    }

    async fn chase_locked(&self, id: &TransactionId) -> Result<(), HandlerError> {
        let Some(transaction) = transactions::find(&self.pool, id)
            .await
            .map_err(HandlerError::transient)?
            .filter(|t| t.status == Status::Processing)
        else {
            return Ok(());
        };
        let Some(gateway) = transaction
            .gateway
            .as_deref()
            .and_then(|code| self.routes.snapshot().gateway(code).cloned())
        else {
            return Ok(());
        };
        let outcome = if self.breakers.permit(&gateway.code) {
            self.query(&transaction, &gateway).await?
        } else {
            Outcome::Ambiguous {
                reason: format!("{}: circuit open", gateway.code),
            }
        };
        if matches!(
            outcome,
            Outcome::Completed { .. } | Outcome::Declined { .. }
        ) {
            return self.settle_with(&transaction, &gateway, &outcome).await;
        }
        let waited = (Utc::now() - transaction.updated_at)
            .to_std()
            .unwrap_or_default();
        if transaction.review_reason.is_none() && waited >= gateway.review_after() {
            let detail = format!(
                "{} accepted it {} s ago; no callback came, and its status query answers {}",
                gateway.code,
                waited.as_secs(),
                outcome.label()
            );
            let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
            transactions::flag_review(&mut tx, id, review::NO_CALLBACK, &detail)
                .await
                .map_err(HandlerError::transient)?;
            paygate_common::outbox::commit(tx)
                .await
                .map_err(HandlerError::transient)?;
        }
        let doubling = 2_u32.saturating_pow(
            u32::try_from(transaction.status_checks)
                .unwrap_or(0)
                .min(16),
        );
        let next = gateway
            .callback_deadline()
            .saturating_mul(doubling)
            .min(LONGEST_CHECK_INTERVAL.max(gateway.callback_deadline()));
        tracing::info!(transaction_id = %id, gateway = %gateway.code, outcome = outcome.label(), ?next, "callback still overdue");
        transactions::next_status_check(&self.pool, id, next)
            .await
            .map_err(HandlerError::transient)
    }
}
