//! A gateway's callback about a refund (its reference is the refund's `rfd_…` id): the
//! gateway's definite word settles a refund still open — `pending` (it overtook the
//! gateway's answer, or the answer was lost) or `processing` — through the refund's
//! version fence; a repeat of a settled refund's state is kept as ignored, one that
//! contradicts it is kept with the evidence, and one whose amount, currency or gateway
//! disagrees with the refund is rejected. Nothing else is touched.

use anyhow::anyhow;
use sqlx::PgConnection;

use paygate_common::domain::{RefundId, Status};
use paygate_common::gateway::{CallbackNotice, CallbackResult};
use paygate_common::kafka::HandlerError;
use paygate_common::refunds::{self, RefundChange, RefundRecord, RefundTransitionError};

use crate::Verdict;

/// Judges `notice` from `gateway` about the refund `id` and applies it, in the
/// caller's database transaction.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    id: &str,
    gateway: &str,
    notice: &CallbackNotice,
) -> Result<Verdict, HandlerError> {
    let id: RefundId = id.parse().map_err(HandlerError::permanent)?;
    let refund = refunds::find(&mut *conn, &id)
        .await
        .map_err(HandlerError::transient)?
        .ok_or_else(|| HandlerError::permanent(anyhow!("refund {id} does not exist")))?;
    if let Some(reason) = mismatch(&refund, gateway, notice) {
        return Ok(Verdict::Rejected(reason));
    }
    let (to, change) = match &notice.result {
        CallbackResult::Approved => (
            Status::Completed,
            RefundChange {
                gateway_refund_id: notice.gateway_txn_id.clone(),
                ..RefundChange::default()
            },
        ),
        CallbackResult::Declined { reason } => (
            Status::Failed,
            RefundChange {
                failure_reason: Some(reason.clone()),
                ..RefundChange::default()
            },
        ),
    };
    if refund.status.is_final() {
        return Ok(Verdict::Ignored(if refund.status == to {
            "duplicate: the refund is already in that state".to_owned()
        } else {
            tracing::warn!(refund_id = %id, status = %refund.status, %to, "a refund callback contradicts a settled refund");
            format!("contradicts the refund, which is {}", refund.status)
        }));
    }
    match refunds::settle(conn, &refund, to, change).await {
        Ok(moved) => {
            tracing::info!(refund_id = %id, status = %moved.status, version = moved.version, "refund callback applied");
            Ok(Verdict::Applied)
        }
        Err(RefundTransitionError::Database(error)) => Err(HandlerError::transient(error)),
        // Moved between our read and our write: read again and judge afresh.
        Err(error) => Err(HandlerError::transient(error)),
    }
}

fn mismatch(refund: &RefundRecord, gateway: &str, notice: &CallbackNotice) -> Option<String> {
    if notice.reference != refund.id.as_str() {
        Some(format!(
            "reference {} is not {}",
            notice.reference, refund.id
        ))
    } else if notice.amount != refund.amount {
        Some(format!("amount {} is not {}", notice.amount, refund.amount))
    } else if notice.currency != refund.currency {
        Some(format!(
            "currency {} is not {}",
            notice.currency, refund.currency
        ))
    } else if refund.gateway != gateway {
        Some(format!("gateway {gateway} was never asked for this refund"))
    } else {
        None
    }
}
