//! Ambiguity is sticky: a pending payment that names a gateway had an attempt there
//! without a definite answer (a timeout after sending, a 5xx, an unreadable body), so
//! that gateway may hold the money. The payment belongs to it until it gives a definite
//! answer about our reference — accepted, completed or declined:
//! - it is asked by status query first;
//! - "unknown reference" is no answer while the attempt is younger than the gateway's
//!   settle window (an overloaded gateway may not have stored a request it is still
//!   working on); after the window, only the same request with the same reference is
//!   sent again, to the same gateway, fenced like a first attempt (a version bump
//!   before the call);
//! - any other answer to that re-submit — `503`, `409`, any 4xx, a timeout — proves
//!   nothing and keeps it ambiguous.
//!
//! The payment never moves to another gateway by itself: only an operator's explicit,
//! recorded release does (admin API and console).

use chrono::Utc;

use paygate_common::gateway::{GatewayRecord, Outcome};
use paygate_common::kafka::HandlerError;
use paygate_common::transactions::TransactionRecord;

use crate::call::Order;
use crate::{PaymentHandler, Step};

impl PaymentHandler {
    /// A pending payment names `code`: an attempt there is unresolved. Only that gateway
    /// is asked, status first.
    pub(crate) async fn resolve(
        &self,
        transaction: TransactionRecord,
        code: &str,
    ) -> Result<Step, HandlerError> {
        let Some(gateway) = self.routes.snapshot().gateway(code).cloned() else {
            return Ok(still_ambiguous(format!("gateway {code} is not configured")));
        };
        if !self.breakers.permit(code) {
            return Ok(still_ambiguous(format!("{code}: circuit open")));
        }
        let outcome = self.query(&transaction, &gateway).await?;
        if outcome.is_definite() {
            return self.apply(&transaction, &gateway, outcome).await;
        }
        if outcome != Outcome::Unknown {
            return Ok(still_ambiguous(format!(
                "{code} gave no answer about it: {}",
                reason_of(&outcome)
            )));
        }
        if within_settle_window(&transaction, &gateway) {
            return Ok(still_ambiguous(format!(
                "{code} does not know it yet, within its settle window"
            )));
        }
        self.resubmit(&transaction, &gateway).await
    }

    /// The same request again, same gateway, same reference (the gateway's idempotency
    /// makes it safe), fenced like a first attempt. Only a definite answer settles it.
    async fn resubmit(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
    ) -> Result<Step, HandlerError> {
        let order = match self.order(transaction).await? {
            Order::Ready(order) => order,
            Order::NoCvv => {
                return Ok(still_ambiguous(format!(
                    "{} does not know it, and it cannot be sent again without the card's expired CVV: asking for its status only",
                    gateway.code
                )))
            }
        };
        let Some(attempt) = self.record_attempt(transaction, gateway, None).await? else {
            return Ok(Step::Done);
        };
        let outcome = self.submit(&attempt, gateway, &order).await?;
        if outcome.is_definite() {
            return self.apply(&attempt, gateway, outcome).await;
        }
        Ok(still_ambiguous(format!(
            "{} was sent it again and gave no definite answer: {}",
            gateway.code,
            reason_of(&outcome)
        )))
    }
}

/// Whether `gateway`'s "unknown reference" about `transaction` is still no answer.
fn within_settle_window(transaction: &TransactionRecord, gateway: &GatewayRecord) -> bool {
    // A row from before the window existed has no attempt time: its last change is one.
    let attempted = transaction.attempted_at.unwrap_or(transaction.updated_at);
    let age = (Utc::now() - attempted).to_std().unwrap_or_default();
    age < gateway.settle_window()
}

fn still_ambiguous(reason: String) -> Step {
    Step::Retry {
        reason,
        ambiguous: true,
    }
}

fn reason_of(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unavailable { reason } | Outcome::Ambiguous { reason } => reason.clone(),
        other => other.label().to_owned(),
    }
}
