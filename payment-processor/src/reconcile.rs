//! Payments left unresolved at a gateway (pending, their retries spent without a
//! definite answer) are never failed, since the gateway may hold the money. This task
//! asks their gateway again on a slow schedule, so a late answer settles them without
//! an operator; a late callback settles them too, through the callback-processor.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use paygate_common::trace::TraceContext;
use paygate_common::transactions;

use crate::PaymentHandler;

/// Payments asked about per round, at most.
const BATCH: i64 = 100;

/// Every `every`, asks about the unresolved payments not asked about for that long.
pub async fn run(handler: PaymentHandler, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let due = match transactions::unresolved_due(&handler.pool, every, BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "could not list unresolved payments");
                continue;
            }
        };
        for id in due {
            if shutdown.is_cancelled() {
                return;
            }
            let trace = TraceContext::for_transaction(id.as_str());
            let span = tracing::info_span!(
                "recheck",
                transaction_id = %id,
                trace_id = trace.map(|c| c.trace_id()).as_deref(),
            );
            let rechecked = handler.recheck(&id).instrument(span);
            let rechecked = match trace {
                Some(context) => context.scope(rechecked).await,
                None => rechecked.await,
            };
            if let Err(error) = rechecked {
                tracing::warn!(transaction_id = %id, error = %format!("{error:#}"), "could not ask about an unresolved payment");
            }
        }
    }
}
