//! A pending payment that names no gateway is offered to its routed gateways, best
//! first, skipping those whose circuit is open or that cannot take its payment method.
//! Before each call the gateway is written on the transaction with a version bump (the
//! fencing token of that choice): a worker whose write is refused asks nobody. Only a
//! gateway that proves it took nothing (connection refused, `503`, a refusal of the
//! request itself) is passed over for the next; any other answer settles the payment or
//! leaves it with that gateway (see [`crate::resolve`]).
//!
//! The order comes from [`crate::strategy`] (the route set's policy, or the merchant's
//! pinned gateways), and every `gateway.attempted` event carries the decision: the
//! strategy, the rule that matched and the scores seen. Each attempt's outcome goes
//! into the gateway's success-rate window ([`crate::scores`]).

use std::collections::HashMap;

use paygate_common::domain::Status;
use paygate_common::events::proto;
use paygate_common::gateway::{GatewayRecord, Outcome, PaymentMethod};
use paygate_common::kafka::HandlerError;
use paygate_common::transactions::{self, Attempt, Change, TransactionRecord, TransitionError};

use crate::call::Order;
use crate::{PaymentHandler, Step};

/// Why a card payment is failed before any gateway is asked when its CVV is gone.
pub(crate) const CVV_EXPIRED: &str = "cvv_expired: the card's security code expired before a gateway could be asked; ask the customer to pay again";

impl PaymentHandler {
    /// A pending payment that names no gateway: offered to its routes in order.
    pub(crate) async fn route(&self, transaction: TransactionRecord) -> Result<Step, HandlerError> {
        let method = transaction.payment_method();
        let snapshot = self.routes.snapshot();
        let plan = snapshot.plan(&transaction);
        let window_size = plan.window_size();
        let scored = plan.scored();
        let windows = if scored.is_empty() {
            HashMap::new()
        } else {
            match self
                .scores
                .windows(&scored, &transaction, window_size)
                .await
            {
                Ok(windows) => windows,
                Err(error) => {
                    tracing::warn!(transaction_id = %transaction.id, %error, "no success rates; ordering by priority");
                    HashMap::new()
                }
            }
        };
        let decision = plan.decide(&windows, &mut rand::rng());
        let takers = decision.order;
        let routing = decision.routing;
        if takers.is_empty() && transaction.pinned_gateways.is_some() {
            let reason = format!(
                "gateway_not_available: no gateway the merchant named ({}) can take this payment now{}",
                transaction.pinned_gateways.as_deref().unwrap_or_default().join(", "),
                if transaction.gateway_fallback { ", nor any routed one" } else { "" }
            );
            self.fail(&transaction, reason).await?;
            return Ok(Step::Done);
        }
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
            self.fail(&transaction, reason).await?;
            return Ok(Step::Done);
        }
        let order = match self.order(&transaction).await? {
            Order::Ready(order) => order,
            // No gateway has been asked since it was released (or ever): nothing can
            // be held anywhere, so failing it is safe, and says why.
            Order::NoCvv => {
                self.fail(&transaction, CVV_EXPIRED.to_owned()).await?;
                return Ok(Step::Done);
            }
        };

        let mut current = transaction;
        let mut reasons = Vec::new();
        for gateway in &takers {
            if !self.breakers.permit(&gateway.code) {
                reasons.push(format!("{}: circuit open", gateway.code));
                continue;
            }
            let Some(attempt) = self
                .record_attempt(&current, gateway, Some(&routing))
                .await?
            else {
                return Ok(Step::Done);
            };
            let outcome = self.submit_permitted(&attempt, gateway, &order).await?;
            if let Some(success) = crate::scores::counts(&outcome) {
                if let Err(error) = self
                    .scores
                    .record(&gateway.code, &attempt, success, window_size)
                    .await
                {
                    tracing::warn!(gateway = %gateway.code, %error, "outcome not counted in the success rate");
                }
            }
            match outcome {
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

    /// Writes down that `gateway` is about to be asked (a version bump: the fencing
    /// token of this call), with the routing decision that chose it when there was one.
    /// `None` when fenced out: another worker moved the payment, so nobody may be asked.
    pub(crate) async fn record_attempt(
        &self,
        seen: &TransactionRecord,
        gateway: &GatewayRecord,
        routing: Option<&proto::RoutingDecision>,
    ) -> Result<Option<TransactionRecord>, HandlerError> {
        // One statement (a history event: nothing to publish), committed with the other
        // attempts of this moment before anyone is asked.
        let attempt = Attempt {
            seen: seen.clone(),
            gateway: gateway.code.clone(),
            routing: routing.cloned(),
        };
        match self
            .attempts
            .write(attempt)
            .await
            .map_err(HandlerError::transient)?
        {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                tracing::info!(transaction_id = %seen.id, %error, "changed concurrently; asking nobody");
                Ok(None)
            }
        }
    }

    /// Forgets the gateway `transaction` names (it proved it took nothing); `None` when
    /// fenced out by a concurrent change.
    pub(crate) async fn release(
        &self,
        transaction: &TransactionRecord,
    ) -> Result<Option<TransactionRecord>, HandlerError> {
        // One statement, committed on its own (a history event: nothing to publish).
        let mut conn = self.pool.acquire().await.map_err(HandlerError::transient)?;
        match transactions::release_attempt(&mut conn, transaction).await {
            Ok(record) => Ok(Some(record)),
            Err(TransitionError::Database(error)) => Err(HandlerError::transient(error)),
            Err(error) => {
                tracing::info!(transaction_id = %transaction.id, %error, "changed concurrently; leaving it");
                Ok(None)
            }
        }
    }

    /// Fails a pending payment that no gateway holds, with `reason`.
    pub(crate) async fn fail(
        &self,
        transaction: &TransactionRecord,
        reason: String,
    ) -> Result<(), HandlerError> {
        let change = Change {
            failure_reason: Some(reason),
            ..Change::default()
        };
        self.finish(transaction, Status::Failed, change).await
    }
}
