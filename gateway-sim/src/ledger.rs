//! What the gateways remember about payments, per gateway and reference: the answer each
//! gave (so repeats and status queries get the same one), whether it charged, and the
//! stalled payments waiting for a release. `GET /charges/{reference}` reads it, so tests
//! can prove no payment was charged twice.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

use crate::callback::Scheduled;
use crate::outcome::Answer;
use crate::state::{Gateway, Sim};

#[derive(Default)]
pub(crate) struct Ledger {
    payments: HashMap<(Gateway, String), Payment>,
}

/// A payment as one gateway remembers it.
pub(crate) struct Payment {
    answer: Answer,
    /// Present for a stalled (`.07`) payment, whose requests wait until it is released.
    stall: Option<Stall>,
}

struct Stall {
    /// Flips to `true` once, on release; held requests watch it.
    released: watch::Sender<bool>,
    /// The callback, sent only on release (taken then, so it is sent once).
    callback: Option<Scheduled>,
}

impl Payment {
    pub(crate) fn new(answer: Answer) -> Self {
        Payment {
            answer,
            stall: None,
        }
    }

    /// A payment whose submit and status queries hang until released, with the
    /// callback to send then.
    pub(crate) fn stalled(answer: Answer, callback: Option<Scheduled>) -> Self {
        let (released, _) = watch::channel(false);
        Payment {
            answer,
            stall: Some(Stall { released, callback }),
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            answer: self.answer.clone(),
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
    /// Becomes `true` when the stall is released; `None` when nothing holds the answer.
    pub(crate) hold: Option<watch::Receiver<bool>>,
}

impl Ledger {
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
            if let Some(stall) = self.payments.get_mut(&key).and_then(|p| p.stall.as_mut()) {
                stalled = true;
                stall.released.send_replace(true);
                due.extend(stall.callback.take());
            }
        }
        stalled.then_some(due)
    }

    /// How many times each gateway charged `reference`.
    fn charges(&self, reference: &str) -> BTreeMap<Gateway, u32> {
        Gateway::ALL
            .into_iter()
            .map(|gateway| {
                let charged = self
                    .payments
                    .get(&(gateway, reference.to_owned()))
                    .is_some_and(|p| p.answer.verdict.takes_payment());
                (gateway, u32::from(charged))
            })
            .collect()
    }
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new().route("/charges/{reference}", get(charges))
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
