//! What the gateways remember about payments, per gateway and reference: the answer each
//! gave (so repeats and status queries get the same one), whether it charged, and the
//! stalled payments waiting for a release, and when a taken payment settles (its status
//! then reads "completed", whether or not its callback arrived). `GET
//! /charges/{reference}` reads it, so tests can prove no payment was charged twice, and
//! `GET /ledger` lists every payment it remembers with its amount and what was refunded
//! of it (see [`crate::refunds`]), so a test can compare the gateways' books with
//! Paygate's.
//!
//! Memory is bounded for long runs: the ledger keeps the last [`KEPT`] payments (a
//! reference older than that is forgotten, as a real gateway's idempotency window
//! ends), never forgetting a stalled payment before its release.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::watch;

use crate::callback::Scheduled;
use crate::outcome::Answer;
use crate::refunds::RefundBook;
use crate::state::{Gateway, Sim};

/// Payments the ledger remembers, across gateways: far more than any test or benchmark
/// run sends (a benchmark hour at 100/s), and a few hundred bytes each.
pub(crate) const KEPT: usize = 500_000;

pub(crate) struct Ledger {
    payments: HashMap<(Gateway, String), Payment>,
    /// Keys in the order they were first recorded, oldest first.
    order: VecDeque<(Gateway, String)>,
    kept: usize,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::keeping(KEPT)
    }
}

/// A payment as one gateway remembers it.
pub(crate) struct Payment {
    answer: Answer,
    amount: Decimal,
    currency: String,
    /// When a taken payment settles: its status then reads "completed". `None` for a
    /// decline, and for a stalled payment until it is released.
    settles_at: Option<Instant>,
    /// How long after its release a stalled payment settles.
    settle_after: Duration,
    /// Present for a stalled (`.07`) payment, whose requests wait until it is released.
    stall: Option<Stall>,
    /// What the gateway's books (its settlement report) say of it.
    pub(crate) books: Books,
}

/// A payment as the gateway's books have it, which is what its settlement report lists:
/// usually what it answered, unless a control made the books go wrong.
#[derive(Debug, Clone)]
pub(crate) struct Books {
    /// When it was booked (the settlement report's `settled_at`).
    pub(crate) at: chrono::DateTime<chrono::Utc>,
    /// The amount settled: the amount asked, unless `settle_amount_delta` was on.
    pub(crate) amount: Decimal,
    /// How many times the charge is booked: 1, 2 under `duplicate_charge`, 0 when it is
    /// `unbooked`.
    pub(crate) entries: u32,
    /// Charged although the answer was a decline (`lost_answer`).
    pub(crate) charged_anyway: bool,
    /// Answered as taken but booked as declined (`booked_declined`).
    pub(crate) declined: bool,
}

impl Books {
    /// The books of a payment booked now for `amount`, as the gateway's `modes` say.
    pub(crate) fn now(amount: Decimal, modes: &crate::control::Modes) -> Self {
        Books {
            at: chrono::Utc::now(),
            amount: amount + modes.settle_amount_delta.unwrap_or_default(),
            entries: if modes.unbooked {
                0
            } else if modes.duplicate_charge {
                2
            } else {
                1
            },
            charged_anyway: false,
            declined: modes.booked_declined,
        }
    }
}

struct Stall {
    /// Flips to `true` once, on release; held requests watch it.
    released: watch::Sender<bool>,
    /// The callback, sent only on release (taken then, so it is sent once).
    callback: Option<Scheduled>,
}

/// What was asked of the gateway: how much, and when a taken payment settles.
pub(crate) struct Charge {
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    /// How long after it is taken the payment settles (its callback's delay).
    pub(crate) settle_after: Duration,
}

impl Payment {
    pub(crate) fn new(answer: Answer, charge: Charge) -> Self {
        let settles_at = answer
            .verdict
            .takes_payment()
            .then(|| Instant::now() + charge.settle_after);
        Payment {
            answer,
            amount: charge.amount,
            currency: charge.currency,
            settles_at,
            settle_after: charge.settle_after,
            stall: None,
            books: Books::now(charge.amount, &crate::control::Modes::default()),
        }
    }

    /// The same payment, booked as `books` says.
    pub(crate) fn booked(self, books: Books) -> Self {
        Payment { books, ..self }
    }

    /// Whether the gateway's books say it charged (a lost answer's decline did).
    pub(crate) fn charged_in_books(&self) -> bool {
        self.answer.verdict.takes_payment() || self.books.charged_anyway
    }

    pub(crate) fn currency(&self) -> &str {
        &self.currency
    }

    /// A payment whose submit and status queries hang until released, with the
    /// callback to send then.
    pub(crate) fn stalled(answer: Answer, charge: Charge, callback: Option<Scheduled>) -> Self {
        let (released, _) = watch::channel(false);
        Payment {
            settles_at: None,
            stall: Some(Stall { released, callback }),
            ..Payment::new(answer, charge)
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            answer: self.answer.clone(),
            settled: self.settles_at.is_some_and(|at| Instant::now() >= at),
            hold: self
                .stall
                .as_ref()
                .filter(|stall| !*stall.released.borrow())
                .map(|stall| stall.released.subscribe()),
        }
    }
}

/// A remembered answer, and what to wait on before giving it if the payment is stalled.
pub(crate) struct Entry {
    pub(crate) answer: Answer,
    /// Taken and settled: a status query reads "completed".
    pub(crate) settled: bool,
    /// Becomes `true` when the stall is released; `None` when nothing holds the answer.
    pub(crate) hold: Option<watch::Receiver<bool>>,
}

impl Ledger {
    pub(crate) fn keeping(kept: usize) -> Self {
        Ledger {
            payments: HashMap::new(),
            order: VecDeque::new(),
            kept: kept.max(1),
        }
    }

    /// Forgets the oldest payments beyond `kept`; a stalled one not yet released goes
    /// to the back instead (its held requests still need it).
    fn forget_beyond_capacity(&mut self) {
        let mut skipped = 0;
        while self.order.len() > self.kept && skipped < self.order.len() {
            let Some(key) = self.order.pop_front() else {
                return;
            };
            let held = self
                .payments
                .get(&key)
                .and_then(|p| p.stall.as_ref())
                .is_some_and(|stall| !*stall.released.borrow());
            if held {
                self.order.push_back(key);
                skipped += 1;
            } else {
                self.payments.remove(&key);
            }
        }
    }

    /// Remembers `payment` unless the gateway already has one for `reference`. Returns
    /// the remembered entry and whether `payment` was the first.
    pub(crate) fn record(
        &mut self,
        gateway: Gateway,
        reference: &str,
        payment: Payment,
    ) -> (Entry, bool) {
        match self.payments.get(&(gateway, reference.to_owned())) {
            Some(existing) => (existing.entry(), false),
            None => {
                let entry = payment.entry();
                self.payments
                    .insert((gateway, reference.to_owned()), payment);
                self.order.push_back((gateway, reference.to_owned()));
                self.forget_beyond_capacity();
                (entry, true)
            }
        }
    }

    pub(crate) fn find(&self, gateway: Gateway, reference: &str) -> Option<Entry> {
        self.payments
            .get(&(gateway, reference.to_owned()))
            .map(Payment::entry)
    }

    /// Releases every stalled payment for `reference`, on any gateway. Returns the
    /// callbacks now due (none when already released), or `None` when no payment for
    /// `reference` was ever stalled.
    pub(crate) fn release(&mut self, reference: &str) -> Option<Vec<Scheduled>> {
        let mut stalled = false;
        let mut due = Vec::new();
        for gateway in Gateway::ALL {
            let key = (gateway, reference.to_owned());
            let Some(payment) = self.payments.get_mut(&key) else {
                continue;
            };
            if let Some(stall) = payment.stall.as_mut() {
                stalled = true;
                if !stall.released.send_replace(true) && payment.answer.verdict.takes_payment() {
                    payment.settles_at = Some(Instant::now() + payment.settle_after);
                }
                due.extend(stall.callback.take());
            }
        }
        stalled.then_some(due)
    }

    /// What `gateway` charged under `reference` (amount, currency), if it took it.
    pub(crate) fn charged(&self, gateway: Gateway, reference: &str) -> Option<(Decimal, String)> {
        self.payments
            .get(&(gateway, reference.to_owned()))
            .filter(|p| p.answer.verdict.takes_payment())
            .map(|p| (p.amount, p.currency.clone()))
    }

    /// Every payment `gateway` booked, oldest first.
    pub(crate) fn booked(&self, gateway: Gateway) -> impl Iterator<Item = (&str, &Payment)> {
        self.order
            .iter()
            .filter(move |key| key.0 == gateway)
            .filter_map(|key| Some((key.1.as_str(), self.payments.get(key)?)))
    }

    /// How many times each gateway charged `reference`.
    fn charges(&self, reference: &str) -> BTreeMap<Gateway, u32> {
        Gateway::ALL
            .into_iter()
            .map(|gateway| {
                let charged = self
                    .payments
                    .get(&(gateway, reference.to_owned()))
                    .filter(|p| p.charged_in_books())
                    .map_or(0, |p| p.books.entries.max(1));
                (gateway, charged)
            })
            .collect()
    }

    /// Every payment remembered, oldest first, with what was refunded of it.
    fn books(&self, refunds: &RefundBook) -> Vec<Booked> {
        self.order
            .iter()
            .filter_map(|key| {
                let payment = self.payments.get(key)?;
                Some(Booked {
                    gateway: key.0,
                    reference: key.1.clone(),
                    charged: payment.charged_in_books(),
                    amount: payment.amount.to_string(),
                    currency: payment.currency.clone(),
                    refunded: refunds.refunded(key.0, &key.1).to_string(),
                    refunds: refunds.count(key.0, &key.1),
                })
            })
            .collect()
    }
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/charges/{reference}", get(charges))
        .route("/ledger", get(ledger))
}

/// One payment in the gateways' books.
#[derive(Serialize)]
struct Booked {
    gateway: Gateway,
    reference: String,
    /// Taken (charged), as opposed to declined.
    charged: bool,
    amount: String,
    currency: String,
    /// The money refunded of it in all (`"0"` when none): never above `amount`.
    refunded: String,
    /// How many refunds gave money back of it.
    refunds: u32,
}

async fn ledger(State(sim): State<Sim>) -> Json<Vec<Booked>> {
    Json(sim.remember(|m| m.ledger.books(&m.refunds)))
}

#[derive(Serialize)]
struct Charges {
    reference: String,
    /// The total across gateways.
    charges: u32,
    by_gateway: BTreeMap<Gateway, u32>,
}

async fn charges(State(sim): State<Sim>, Path(reference): Path<String>) -> Json<Charges> {
    let by_gateway = sim.remember(|m| m.ledger.charges(&reference));
    Json(Charges {
        charges: by_gateway.values().sum(),
        reference,
        by_gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Verdict;

    fn charge() -> Charge {
        Charge {
            amount: Decimal::ONE,
            currency: "USD".into(),
            settle_after: Duration::ZERO,
        }
    }

    fn taken() -> Payment {
        Payment::new(Answer::new(Gateway::Json, Verdict::Approved), charge())
    }

    #[test]
    fn the_ledger_forgets_its_oldest_payments_beyond_capacity_but_never_a_held_stall() {
        let mut ledger = Ledger::keeping(3);
        let stall = Payment::stalled(
            Answer::new(Gateway::Json, Verdict::Approved),
            charge(),
            None,
        );
        ledger.record(Gateway::Json, "stalled", stall);
        for reference in ["a", "b", "c", "d"] {
            ledger.record(Gateway::Json, reference, taken());
        }
        assert_eq!(ledger.payments.len(), 3);
        assert!(
            ledger.find(Gateway::Json, "stalled").is_some(),
            "held: kept"
        );
        assert!(
            ledger.find(Gateway::Json, "a").is_none(),
            "the oldest is forgotten"
        );
        assert!(ledger.find(Gateway::Json, "b").is_none());
        assert!(ledger.find(Gateway::Json, "d").is_some());
        assert_eq!(ledger.release("stalled").map(|due| due.len()), Some(0));
        // The stall went to the back when it was held: two more payments reach it.
        ledger.record(Gateway::Json, "e", taken());
        assert!(ledger.find(Gateway::Json, "stalled").is_some());
        ledger.record(Gateway::Json, "f", taken());
        assert!(
            ledger.find(Gateway::Json, "stalled").is_none(),
            "released: forgotten like the rest"
        );
    }
}
