//! Success-rate windows, in Redis: per (gateway, country, currency, payment method) a
//! list of the latest authorization outcomes (`1` taken, `0` refused), newest first,
//! trimmed to the window. Every processor replica reads and writes the same lists, and
//! they outlive a processor's restart.
//!
//! Redis rather than PostgreSQL: an outcome is written for every attempt and read for
//! every success-rate decision, and PostgreSQL's per-payment write budget is the
//! suite's first bottleneck (see DESIGN.md), while a lost window costs only routing
//! quality — the windows refill within `window_size` payments — never correctness, which
//! is what Redis may hold here. A Redis that does not answer within [`PATIENCE`] leaves
//! the decision without scores (priority order, recorded as such); a failed write is
//! logged and forgotten.
//!
//! What counts: a payment taken (accepted, completed) is a success; the gateway's own
//! refusal (a decline that is not the customer's, a proof it took nothing) counts
//! against it; a customer's own decline ([`CUSTOMER_DECLINES`]) and an ambiguous answer
//! say nothing about the gateway and are not counted.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;

use paygate_common::gateway::{Outcome, PaymentMethod};
use paygate_common::transactions::TransactionRecord;

use crate::strategy::Window;

/// How long a routing decision waits for the windows before it goes without them.
pub const PATIENCE: Duration = Duration::from_millis(250);

/// How long a window no attempt has touched is kept: a (gateway, country, currency,
/// method) nobody routes to any more leaves no key behind, and a gateway back after a
/// week away is measured afresh rather than by what it did then.
pub const KEPT_UNTOUCHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Decline reasons that are the customer's, whichever gateway is asked.
pub const CUSTOMER_DECLINES: &[&str] = &[
    "insufficient_funds",
    "expired_card",
    "incorrect_cvc",
    "invalid_card",
    "card_velocity_exceeded",
];

/// Whether `outcome` counts in a success-rate window, and which way.
pub fn counts(outcome: &Outcome) -> Option<bool> {
    match outcome {
        Outcome::Accepted { .. } | Outcome::Completed { .. } => Some(true),
        Outcome::Declined { reason } => {
            let customer = CUSTOMER_DECLINES.iter().any(|c| reason.contains(c));
            (!customer).then_some(false)
        }
        Outcome::Unavailable { .. } => Some(false),
        Outcome::Ambiguous { .. } | Outcome::Unknown => None,
    }
}

/// The shared windows; cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct Scores {
    redis: ConnectionManager,
    /// Prepended to every key: `<prefix>:score:<gateway>:<country>:<currency>:<method>`.
    prefix: String,
}

impl Scores {
    pub fn new(redis: ConnectionManager, prefix: String) -> Self {
        Scores { redis, prefix }
    }

    fn key(&self, gateway: &str, payment: &TransactionRecord) -> String {
        let method = match payment.payment_method() {
            PaymentMethod::Card => "card",
            PaymentMethod::Plain => "plain",
        };
        format!(
            "{}:score:{gateway}:{}:{}:{method}",
            self.prefix,
            payment.country.as_deref().unwrap_or("-"),
            payment.currency.trim()
        )
    }

    /// The windows of `gateways` for payments like `payment`: one round trip.
    pub async fn windows(
        &self,
        gateways: &[&str],
        payment: &TransactionRecord,
        size: usize,
    ) -> anyhow::Result<HashMap<String, Window>> {
        let mut pipe = redis::pipe();
        let last = isize::try_from(size).unwrap_or(isize::MAX) - 1;
        for gateway in gateways {
            pipe.lrange(self.key(gateway, payment), 0, last);
        }
        let lists: Vec<Vec<String>> =
            tokio::time::timeout(PATIENCE, pipe.query_async(&mut self.redis.clone()))
                .await
                .map_err(|_| anyhow::anyhow!("Redis did not answer within {PATIENCE:?}"))??;
        Ok(gateways
            .iter()
            .zip(lists)
            .map(|(gateway, list)| {
                let samples = u32::try_from(list.len()).unwrap_or(u32::MAX);
                let successes =
                    u32::try_from(list.iter().filter(|o| *o == "1").count()).unwrap_or(u32::MAX);
                ((*gateway).to_owned(), Window { successes, samples })
            })
            .collect())
    }

    /// Adds an outcome of `gateway` for payments like `payment` to its window of `size`.
    pub async fn record(
        &self,
        gateway: &str,
        payment: &TransactionRecord,
        success: bool,
        size: usize,
    ) -> anyhow::Result<()> {
        let key = self.key(gateway, payment);
        let last = isize::try_from(size).unwrap_or(isize::MAX) - 1;
        let () = tokio::time::timeout(
            PATIENCE,
            redis::pipe()
                .atomic()
                .lpush(&key, if success { "1" } else { "0" })
                .ignore()
                .ltrim(&key, 0, last)
                .ignore()
                .expire(
                    &key,
                    i64::try_from(KEPT_UNTOUCHED.as_secs()).unwrap_or(i64::MAX),
                )
                .ignore()
                .query_async(&mut self.redis.clone()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis did not answer within {PATIENCE:?}"))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customers_own_decline_does_not_count_against_the_gateway() {
        let declined = |reason: &str| Outcome::Declined {
            reason: reason.to_owned(),
        };
        assert_eq!(counts(&declined("insufficient_funds")), None);
        assert_eq!(counts(&declined("do_not_honor")), Some(false));
        assert_eq!(
            counts(&Outcome::Accepted {
                gateway_txn_id: "x".into()
            }),
            Some(true)
        );
        assert_eq!(
            counts(&Outcome::Ambiguous {
                reason: "timeout".into()
            }),
            None
        );
    }
}
