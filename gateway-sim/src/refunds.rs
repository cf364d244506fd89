//! Refunds, the rules every simulated gateway shares whatever its wire format: a gateway
//! refunds only a payment it charged, never more than it charged in all, and each
//! refund reference at most once (a repeat finds the first answer). It counts the money
//! it refunded per payment reference, which `GET /ledger` shows beside the charge, so a
//! test can prove nothing was refunded twice or beyond the charge.
//!
//! The refund amount's cents pick the outcome, mirroring a payment's: `.01` declines,
//! `.02` refunds and answers only after `slow_answer`, `.03` answers 503 and refunds
//! nothing (not remembered), `.06` refunds and then a proxy answers 504, `.07` refunds
//! and holds the request and every status query open until `POST
//! /control/release/{reference}`; anything else refunds at once. A gateway answers a
//! refund synchronously: refunded ("completed") or declined. A gateway that was given a
//! callback URL (the JSON gateway) also calls back about a refund it made, after the
//! callback delay (a stalled one on its release; none when its callbacks are lost).

use std::collections::HashMap;

use rust_decimal::Decimal;
use tokio::sync::watch;

use crate::callback::{self, Callback, Scheduled};
use crate::flow::Reply;
use crate::outcome::{Answer, DeclineReason, Scenario, Verdict};
use crate::state::{Gateway, Sim};

/// A refund asked of a gateway, parsed at the edge.
pub(crate) struct RefundRequest {
    pub(crate) gateway: Gateway,
    /// The refund's own reference: its idempotency key.
    pub(crate) reference: String,
    /// The payment it refunds, by the reference it was charged under.
    pub(crate) payment_reference: String,
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    /// The callback confirming the refund, built by the gateway from the answer it gives
    /// (`None`: this gateway does not call back about refunds).
    pub(crate) callback: Option<fn(&RefundRequest, &Answer) -> Callback>,
    pub(crate) callback_url: Option<String>,
}

/// A refund as one gateway remembers it.
struct Refund {
    payment_reference: String,
    amount: Decimal,
    answer: Answer,
    /// Present for a stalled (`.07`) refund until released.
    stall: Option<watch::Sender<bool>>,
    /// A stalled refund's callback, sent on release.
    held_callback: Option<Scheduled>,
    /// When it was booked, and how many times it was paid (2 under `double_refund`).
    booked_at: chrono::DateTime<chrono::Utc>,
    paid: u32,
    currency: String,
}

/// A refund as the gateway's settlement report lists it.
pub(crate) struct BookedRefund {
    pub(crate) reference: String,
    pub(crate) payment_reference: String,
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    pub(crate) refunded: bool,
    pub(crate) paid: u32,
    pub(crate) at: chrono::DateTime<chrono::Utc>,
}

/// Every refund the gateways remember, per gateway and refund reference.
#[derive(Default)]
pub(crate) struct RefundBook {
    refunds: HashMap<(Gateway, String), Refund>,
}

impl RefundBook {
    /// What `gateway` refunded of `payment_reference` in all.
    pub(crate) fn refunded(&self, gateway: Gateway, payment_reference: &str) -> Decimal {
        self.refunds
            .iter()
            .filter(|((g, _), r)| {
                *g == gateway
                    && r.payment_reference == payment_reference
                    && r.answer.verdict.takes_payment()
            })
            .map(|(_, r)| r.amount * Decimal::from(r.paid))
            .sum()
    }

    /// Every refund `gateway` booked, as its report lists them.
    pub(crate) fn booked(&self, gateway: Gateway) -> Vec<BookedRefund> {
        let mut refunds: Vec<BookedRefund> = self
            .refunds
            .iter()
            .filter(|((g, _), _)| *g == gateway)
            .map(|((_, reference), r)| BookedRefund {
                reference: reference.clone(),
                payment_reference: r.payment_reference.clone(),
                amount: r.amount,
                currency: r.currency.clone(),
                refunded: r.answer.verdict.takes_payment(),
                paid: r.paid,
                at: r.booked_at,
            })
            .collect();
        refunds.sort_by(|a, b| (a.at, &a.reference).cmp(&(b.at, &b.reference)));
        refunds
    }

    /// How many refunds `gateway` made of `payment_reference`.
    pub(crate) fn count(&self, gateway: Gateway, payment_reference: &str) -> u32 {
        let made = self
            .refunds
            .iter()
            .filter(|((g, _), r)| {
                *g == gateway
                    && r.payment_reference == payment_reference
                    && r.answer.verdict.takes_payment()
            })
            .map(|(_, r)| r.paid)
            .sum::<u32>();
        made
    }

    fn find(
        &self,
        gateway: Gateway,
        reference: &str,
    ) -> Option<(Answer, Option<watch::Receiver<bool>>)> {
        self.refunds.get(&(gateway, reference.to_owned())).map(|r| {
            let hold = r
                .stall
                .as_ref()
                .filter(|s| !*s.borrow())
                .map(watch::Sender::subscribe);
            (r.answer.clone(), hold)
        })
    }

    /// Releases the stalled refund `reference` on any gateway: the callbacks now due,
    /// or `None` when no refund for `reference` was ever stalled.
    pub(crate) fn release(&mut self, reference: &str) -> Option<Vec<Scheduled>> {
        let mut found = false;
        let mut due = Vec::new();
        for gateway in Gateway::ALL {
            let Some(refund) = self.refunds.get_mut(&(gateway, reference.to_owned())) else {
                continue;
            };
            if let Some(stall) = &refund.stall {
                stall.send_replace(true);
                found = true;
                due.extend(refund.held_callback.take());
            }
        }
        found.then_some(due)
    }
}

/// A refund request: refunded or declined once per reference, answered as its
/// scenario says.
pub(crate) async fn refund(sim: &Sim, request: RefundRequest) -> Reply {
    let control = sim.remember(|m| m.control.clone());
    let answer_delay = control.answer_delay().unwrap_or(sim.config.answer_delay);
    let scenario = Scenario::of(request.amount);
    if control.unavailable() || scenario == Scenario::Unavailable {
        sim.pause(answer_delay).await;
        return Reply::Unavailable;
    }
    let modes = control.modes(request.gateway);
    let lost = modes.lost_callback;
    let (answer, hold, send_now) = sim.remember(|m| {
        let key = (request.gateway, request.reference.clone());
        if let Some((answer, hold)) = m.refunds.find(key.0, &key.1) {
            return (answer, hold, None);
        }
        let verdict = verdict(m, &request, scenario);
        let answer = Answer::new(request.gateway, verdict);
        let stall = (scenario == Scenario::Stall).then(|| watch::channel(false).0);
        let hold = stall.as_ref().map(watch::Sender::subscribe);
        let scheduled = request
            .callback
            .filter(|_| verdict.takes_payment() && !lost && request.callback_url.is_some())
            .map(|build| Scheduled {
                callback: build(&request, &answer),
                delay: sim.config.callback_delay,
                sends: 1,
            });
        let (held_callback, send_now) = if stall.is_some() {
            (scheduled, None)
        } else {
            (None, scheduled)
        };
        tracing::info!(gateway = ?request.gateway, reference = %request.reference, ?scenario, ?verdict, "refund asked");
        m.refunds.refunds.insert(
            key,
            Refund {
                payment_reference: request.payment_reference.clone(),
                amount: request.amount,
                answer: answer.clone(),
                stall,
                held_callback,
                booked_at: chrono::Utc::now(),
                paid: if modes.double_refund { 2 } else { 1 },
                currency: request.currency.clone(),
            },
        );
        (answer, hold, send_now)
    });
    if let Some(scheduled) = send_now {
        callback::send_later(sim, scheduled);
    }
    if let Some(hold) = hold {
        if !released(sim, hold).await {
            return Reply::ProxyTimeout;
        }
    }
    sim.pause(match scenario {
        Scenario::SlowAnswer => sim.config.slow_answer,
        _ => answer_delay,
    })
    .await;
    match scenario {
        Scenario::ProxyTimeout => Reply::ProxyTimeout,
        _ => settled(answer),
    }
}

/// A refund's status query: `None` when the gateway has no refund for `reference`.
pub(crate) async fn query(sim: &Sim, gateway: Gateway, reference: &str) -> Option<Reply> {
    let (control, found) =
        sim.remember(|m| (m.control.clone(), m.refunds.find(gateway, reference)));
    if control.unavailable() {
        return Some(Reply::Unavailable);
    }
    let (answer, hold) = found?;
    if let Some(hold) = hold {
        if !released(sim, hold).await {
            return Some(Reply::ProxyTimeout);
        }
    }
    Some(settled(answer))
}

/// A refund is final once decided: refunded reads "completed".
fn settled(answer: Answer) -> Reply {
    if answer.verdict.takes_payment() {
        Reply::Settled(answer)
    } else {
        Reply::Answer(answer)
    }
}

/// Refunds only what this gateway charged, and never past the charge in all.
fn verdict(memory: &crate::state::Memory, request: &RefundRequest, scenario: Scenario) -> Verdict {
    if scenario == Scenario::Decline {
        return Verdict::Declined(DeclineReason::InsufficientFunds);
    }
    let Some(charge) = memory
        .ledger
        .charged(request.gateway, &request.payment_reference)
    else {
        return Verdict::Declined(DeclineReason::UnknownPayment);
    };
    let already = memory
        .refunds
        .refunded(request.gateway, &request.payment_reference);
    if charge.1 != request.currency || already + request.amount > charge.0 {
        return Verdict::Declined(DeclineReason::ExceedsCharge);
    }
    Verdict::Approved
}

async fn released(sim: &Sim, mut hold: watch::Receiver<bool>) -> bool {
    tokio::select! {
        released = async { hold.wait_for(|released| *released).await.is_ok() } => released,
        () = sim.shutdown.cancelled() => false,
    }
}
