//! The money invariant: the simulator's books (`GET /ledger`) against Paygate's records.
//! Every `completed` payment was charged exactly once, at the gateway it names, for its
//! amount and currency; no payment was charged at two gateways; no `failed` payment was
//! charged unless it is flagged as a contradiction for a human; the gateways charged
//! nothing Paygate has no payment for; and, once the flow has settled, no payment is
//! left non-final without being listed for a human (unresolved or under review).
//!
//! Refunds too: per payment, the gateways never refunded more than was charged, every
//! refund Paygate has `completed` was refunded there (so what the gateway refunded is
//! at least that), and the gateway refunded nothing beyond the completed refunds but
//! what open refunds may hold — once settled, only open refunds listed for a human.
//! `amount_refunded` is the sum of the completed refunds.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::Deserialize;
use sqlx::PgPool;

/// One payment in the simulator's books.
#[derive(Debug, Deserialize)]
struct Booked {
    /// `json`, `soap` or `card`: the simulator's own names.
    gateway: String,
    reference: String,
    charged: bool,
    amount: Decimal,
    currency: String,
    /// What the gateway refunded of it in all.
    #[serde(default)]
    refunded: Decimal,
}

#[derive(Debug, sqlx::FromRow)]
struct Paid {
    id: String,
    status: String,
    gateway: Option<String>,
    amount: Decimal,
    currency: String,
    review_reason: Option<String>,
    unresolved: bool,
    amount_refunded: Decimal,
    /// The sums of its refunds: completed, open (pending or processing), and open and
    /// listed for a human (unresolved).
    refunds_completed: Decimal,
    refunds_open: Decimal,
    refunds_open_unresolved: Decimal,
    /// Open refunds not listed for a human.
    refunds_open_unlisted: i64,
}

/// When the invariant is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Payments may still be on their way: a non-final one is fine.
    InFlight,
    /// Everything has had its time: a non-final payment must be listed for a human.
    Settled,
}

/// Every violation of the money invariant between the simulators at `simulators` (every
/// gateway the payments could reach) and the database behind `pool` (empty when it
/// holds).
pub async fn money_violations(pool: &PgPool, simulators: &[&str], moment: Moment) -> Vec<String> {
    // Which Paygate gateway is which of a simulator's: by base URL.
    let codes: Vec<(String, String)> = sqlx::query_as("SELECT code, base_url FROM gateway")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut books: Vec<(String, Booked)> = Vec::new();
    for simulator in simulators {
        let base = simulator.trim_end_matches('/');
        let booked: Vec<Booked> = reqwest::get(format!("{base}/ledger"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for entry in booked {
            let url = format!("{base}/{}", entry.gateway);
            let code = codes
                .iter()
                .find(|(_, at)| at.trim_end_matches('/') == url)
                .map_or_else(|| format!("(unrouted {url})"), |(code, _)| code.clone());
            books.push((code, entry));
        }
    }
    let mut charges: BTreeMap<&str, Vec<(String, &Booked)>> = BTreeMap::new();
    for (code, booked) in books.iter().filter(|(_, b)| b.charged) {
        charges
            .entry(booked.reference.as_str())
            .or_default()
            .push((code.clone(), booked));
    }
    let paid: Vec<Paid> = sqlx::query_as(
        "SELECT t.id, t.status, t.gateway, t.amount, t.currency, t.review_reason,
                t.unresolved_since IS NOT NULL AS unresolved, t.amount_refunded,
                COALESCE(sum(r.amount) FILTER (WHERE r.status = 'completed'), 0) AS refunds_completed,
                COALESCE(sum(r.amount) FILTER (WHERE r.status IN ('pending', 'processing')), 0) AS refunds_open,
                COALESCE(sum(r.amount) FILTER (WHERE r.status IN ('pending', 'processing')
                                                 AND r.unresolved_since IS NOT NULL), 0) AS refunds_open_unresolved,
                count(r.id) FILTER (WHERE r.status IN ('pending', 'processing')
                                      AND r.unresolved_since IS NULL) AS refunds_open_unlisted
           FROM transaction t LEFT JOIN refund r ON r.transaction_id = t.id
          GROUP BY t.id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let known: HashMap<&str, &Paid> = paid.iter().map(|p| (p.id.as_str(), p)).collect();

    let mut violations = Vec::new();
    for (reference, at) in &charges {
        if !known.contains_key(reference) {
            violations.push(format!(
                "{reference}: charged at {:?}, and Paygate has no such payment",
                at.iter().map(|(code, _)| code).collect::<Vec<_>>()
            ));
        }
    }
    for payment in &paid {
        let at = charges
            .get(payment.id.as_str())
            .map_or(&[][..], Vec::as_slice);
        let gateways: Vec<&str> = at.iter().map(|(code, _)| code.as_str()).collect();
        let id = &payment.id;
        if at.len() > 1 {
            violations.push(format!(
                "{id}: charged at {} gateways: {gateways:?}",
                at.len()
            ));
        }
        let refunded: Decimal = at.iter().map(|(_, booked)| booked.refunded).sum();
        violations.extend(refund_violations(payment, refunded, at, moment));
        match payment.status.as_str() {
            "completed" => match at {
                [(code, booked)] => {
                    if Some(code.as_str()) != payment.gateway.as_deref() {
                        violations.push(format!(
                            "{id}: completed at {:?}, charged at {code}",
                            payment.gateway
                        ));
                    }
                    if booked.amount != payment.amount || booked.currency != payment.currency.trim()
                    {
                        violations.push(format!(
                            "{id}: completed for {} {}, charged {} {}",
                            payment.amount, payment.currency, booked.amount, booked.currency
                        ));
                    }
                }
                [] => violations.push(format!("{id}: completed, and no gateway charged it")),
                _ => {}
            },
            "failed"
                if !at.is_empty()
                    && payment.review_reason.as_deref() != Some("charged_but_failed") =>
            {
                violations.push(format!(
                    "{id}: failed, charged at {gateways:?}, and not flagged for a human"
                ));
            }
            "pending" | "processing"
                if moment == Moment::Settled
                    && !payment.unresolved
                    && payment.review_reason.is_none() =>
            {
                violations.push(format!(
                    "{id}: left {} (charged at {gateways:?}) without being listed for a human",
                    payment.status
                ));
            }
            _ => {}
        }
    }
    violations
}

/// What is wrong with `payment`'s refunds, given what its gateways refunded of it.
fn refund_violations(
    payment: &Paid,
    refunded: Decimal,
    charged: &[(String, &Booked)],
    moment: Moment,
) -> Vec<String> {
    let id = &payment.id;
    let mut violations = Vec::new();
    let charge: Decimal = charged.iter().map(|(_, booked)| booked.amount).sum();
    if refunded > charge {
        violations.push(format!("{id}: refunded {refunded} of a charge of {charge}"));
    }
    if payment.refunds_completed > refunded {
        violations.push(format!(
            "{id}: {} of refunds completed, and the gateway refunded {refunded}",
            payment.refunds_completed
        ));
    }
    if payment.amount_refunded != payment.refunds_completed {
        violations.push(format!(
            "{id}: amount_refunded {} is not its completed refunds' {}",
            payment.amount_refunded, payment.refunds_completed
        ));
    }
    let may_hold = match moment {
        Moment::InFlight => payment.refunds_open,
        Moment::Settled => payment.refunds_open_unresolved,
    };
    if refunded > payment.refunds_completed + may_hold {
        violations.push(format!(
            "{id}: the gateway refunded {refunded}, Paygate completed {} and has {may_hold} open that it may hold",
            payment.refunds_completed
        ));
    }
    if moment == Moment::Settled && payment.refunds_open_unlisted > 0 {
        violations.push(format!(
            "{id}: {} open refunds left without being listed for a human",
            payment.refunds_open_unlisted
        ));
    }
    violations
}

/// Panics with every violation of the money invariant (see [`money_violations`]).
pub async fn assert_money_invariant(pool: &PgPool, simulators: &[&str], moment: Moment) {
    let violations = money_violations(pool, simulators, moment).await;
    assert!(
        violations.is_empty(),
        "the money invariant does not hold:\n{}",
        violations.join("\n")
    );
}
