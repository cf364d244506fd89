//! The money invariant: the simulator's books (`GET /ledger`) against Paygate's records.
//! Every `completed` payment was charged exactly once, at the gateway it names, for its
//! amount and currency; no payment was charged at two gateways; no `failed` payment was
//! charged unless it is flagged as a contradiction for a human; the gateways charged
//! nothing Paygate has no payment for; and, once the flow has settled, no payment is
//! left non-final without being listed for a human (unresolved or under review).

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
        "SELECT id, status, gateway, amount, currency, review_reason,
                unresolved_since IS NOT NULL AS unresolved
           FROM transaction",
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

/// Panics with every violation of the money invariant (see [`money_violations`]).
pub async fn assert_money_invariant(pool: &PgPool, simulators: &[&str], moment: Moment) {
    let violations = money_violations(pool, simulators, moment).await;
    assert!(
        violations.is_empty(),
        "the money invariant does not hold:\n{}",
        violations.join("\n")
    );
}
