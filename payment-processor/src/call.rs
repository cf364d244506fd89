//! Every call to a gateway: the order it is sent (a card opened only here), one call
//! at a time under the gateway's concurrency limit, its outcome told to the gateway's
//! circuit breaker and to the metrics.

use std::sync::{Arc, PoisonError};

use anyhow::anyhow;
use tokio::sync::Semaphore;

use paygate_common::gateway::{Call, GatewayRecord, Outcome, PaymentMethod, PaymentOrder};
use paygate_common::kafka::HandlerError;
use paygate_common::metrics;
use paygate_common::transactions::{self, TransactionRecord};

use crate::PaymentHandler;

/// What can be sent to a gateway about a payment.
pub(crate) enum Order {
    Ready(PaymentOrder),
    /// A card payment whose CVV was given but expired (its TTL in Redis passed): it is
    /// never sent without one silently. A card given without a CVV is sent as it is.
    NoCvv,
}

impl PaymentHandler {
    /// Submits `order` for `transaction` to `gateway` if its circuit lets a call
    /// through; an open circuit proves nothing, so it is ambiguous here.
    pub(crate) async fn submit(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
        order: &PaymentOrder,
    ) -> Result<Outcome, HandlerError> {
        if !self.breakers.permit(&gateway.code) {
            return Ok(Outcome::Ambiguous {
                reason: format!("{}: circuit open", gateway.code),
            });
        }
        self.submit_permitted(transaction, gateway, order).await
    }

    /// Submits `order` to `gateway`, whose breaker the caller asked.
    pub(crate) async fn submit_permitted(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
        order: &PaymentOrder,
    ) -> Result<Outcome, HandlerError> {
        let order = PaymentOrder {
            callback_url: format!("{}/{}", self.callback_base, gateway.code),
            ..order.clone()
        };
        let outcome = self
            .call(gateway, "submit", |call| {
                let order = &order;
                async move { Ok(gateway_adapter(call.gateway)?.submit(call, order).await) }
            })
            .await?;
        tracing::info!(transaction_id = %transaction.id, gateway = %gateway.code, ?outcome, "gateway answered");
        Ok(outcome)
    }

    /// Asks `gateway` what became of `transaction` (our reference), whose breaker the
    /// caller asked.
    pub(crate) async fn query(
        &self,
        transaction: &TransactionRecord,
        gateway: &GatewayRecord,
    ) -> Result<Outcome, HandlerError> {
        let reference = transaction.id.to_string();
        let outcome = self
            .call(gateway, "query", |call| {
                let reference = &reference;
                async move { Ok(gateway_adapter(call.gateway)?.query(call, reference).await) }
            })
            .await?;
        tracing::info!(transaction_id = %transaction.id, gateway = %gateway.code, ?outcome, "status query answered");
        Ok(outcome)
    }

    /// Makes one call to `gateway` under its concurrency limit, and tells its circuit
    /// breaker how it went. The caller checked the breaker.
    pub(crate) async fn call<'a, F, Fut>(
        &'a self,
        gateway: &'a GatewayRecord,
        operation: &'static str,
        f: F,
    ) -> Result<Outcome, HandlerError>
    where
        F: FnOnce(Call<'a>) -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, HandlerError>>,
    {
        // An address literal never reaches the resolver that guards names: checked here.
        // Refused, nothing was sent, so the payment was not taken there.
        if let Err(refusal) = self.egress.check_url(&gateway.base_url) {
            tracing::warn!(gateway = %gateway.code, %refusal, "gateway URL refused by the egress policy");
            return Ok(Outcome::Unavailable {
                reason: format!("{}: base_url {refusal}", gateway.code),
            });
        }
        let limit = self.limit(gateway);
        let _permit = limit
            .acquire_owned()
            .await
            .map_err(|e| HandlerError::transient(anyhow!("gateway limit closed: {e}")))?;
        let started = std::time::Instant::now();
        let outcome = f(Call {
            http: &self.http,
            gateway,
        })
        .await?;
        metrics::gateway_call(&gateway.code, operation, outcome.label(), started.elapsed());
        let failed = matches!(
            outcome,
            Outcome::Unavailable { .. } | Outcome::Ambiguous { .. }
        );
        self.breakers.record(&gateway.code, !failed);
        Ok(outcome)
    }

    fn limit(&self, gateway: &GatewayRecord) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        limits
            .entry(gateway.code.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    usize::try_from(gateway.max_concurrency).unwrap_or(1).max(1),
                ))
            })
            .clone()
    }

    /// What a gateway is asked to do (its callback URL is set per gateway when sent); a
    /// card payment's card is opened only here. A card whose sealed number is missing or
    /// whose key left the key ring is a permanent error; a CVV that expired is
    /// [`Order::NoCvv`]; Redis down is transient.
    pub(crate) async fn order(
        &self,
        transaction: &TransactionRecord,
    ) -> Result<Order, HandlerError> {
        let card = if transaction.payment_method() == PaymentMethod::Card {
            let (key_id, ciphertext, cvv_given) =
                transactions::sealed_card(&self.pool, &transaction.id)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| {
                        HandlerError::permanent(anyhow!(
                            "card payment {} has no card",
                            transaction.id
                        ))
                    })?;
            let mut card = self
                .cards
                .open(&key_id, &ciphertext)
                .map_err(HandlerError::permanent)?;
            card.cvv = self
                .cvvs
                .get(&transaction.id)
                .await
                .map_err(HandlerError::transient)?;
            if cvv_given && card.cvv.is_none() {
                return Ok(Order::NoCvv);
            }
            Some(card)
        } else {
            None
        };
        Ok(Order::Ready(PaymentOrder {
            reference: transaction.id.to_string(),
            amount: transaction.amount,
            currency: transaction.currency.trim().to_owned(),
            kind: transaction.kind,
            country: transaction.country.clone(),
            callback_url: String::new(),
            card,
        }))
    }
}

pub(crate) fn gateway_adapter(
    gateway: &GatewayRecord,
) -> Result<&'static dyn paygate_common::gateway::Gateway, HandlerError> {
    gateway.adapter().ok_or_else(|| {
        HandlerError::transient(anyhow!(
            "gateway {} speaks {}, which this build has no adapter for",
            gateway.code,
            gateway.protocol
        ))
    })
}
