//! The rules every simulated gateway shares, whatever its wire format: the controls, the
//! scenario of the amount, idempotency per gateway and reference, when the callback goes
//! and when the answer does. A gateway parses its request into a [`Submission`], calls
//! [`submit`] or [`query`], and renders the [`Reply`] its own way.
//!
//! Order of a submit: a forced 503 or a `.03` answers 503 after the answer delay and is
//! not remembered; a re-submit of a reference an overloaded gateway is still working on
//! answers 409 (`duplicate_in_flight`) or 503; an overloaded gateway holds a first submit
//! before it stores it (in a task of its own, so the payment completes even after the
//! caller gave up); otherwise the first submit for a reference is recorded (charged
//! unless declined) and its callback scheduled (unless the callback is to be lost), a
//! repeat finds the first answer; then the answer waits as the scenario says (slow,
//! callback first, stalled until released) and goes.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse as _, Response};
use tokio::sync::watch;

use crate::callback::{self, Callback, Scheduled};
use crate::control::Modes;
use crate::ledger::{Books, Charge, Payment};
use crate::outcome::{Answer, DeclineReason, Scenario, Verdict};
use crate::state::{Gateway, Sim};

/// How long a `.05` answer waits after its callback was sent, so the callback wins.
const CALLBACK_FIRST_LEAD: Duration = Duration::from_millis(300);

/// How many callback delays a pending (card) payment waits before it is confirmed.
const PENDING_CALLBACK_DELAYS: u32 = 3;

/// A payment submitted to a gateway, parsed at the edge.
pub(crate) struct Submission {
    pub(crate) gateway: Gateway,
    pub(crate) reference: String,
    pub(crate) amount: rust_decimal::Decimal,
    pub(crate) currency: String,
    pub(crate) scenario: Scenario,
    /// The answer to give if this is the first submit for the reference.
    pub(crate) answer: Answer,
    /// The callback confirming `answer`, sent only if the payment is taken.
    pub(crate) callback: Callback,
}

/// What the gateway's HTTP layer sends back.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The gateway's own answer, the same for every repeat and status query.
    Answer(Answer),
    /// A status query about a taken payment that has settled: "completed".
    Settled(Answer),
    /// A re-submit of a reference the gateway is still working on: `409`. Nothing is
    /// known from it, either way.
    InFlight,
    /// The gateway is down: nothing was taken.
    Unavailable,
    /// A proxy in front gave up waiting: the payment may well have been taken.
    ProxyTimeout,
}

pub(crate) async fn submit(sim: &Sim, mut submission: Submission) -> Reply {
    let control = sim.remember(|m| m.control.clone());
    let modes = control.modes(submission.gateway);
    let answer_delay = modes
        .latency()
        .or(control.answer_delay())
        .unwrap_or(sim.config.answer_delay);
    if control.unavailable() || submission.scenario == Scenario::Unavailable {
        sim.pause(answer_delay).await;
        return Reply::Unavailable;
    }
    // A gateway that declines of its own accord does so only where the amount would be
    // approved; a repeat still finds the first answer in the ledger.
    if submission.scenario == Scenario::Approve
        && submission.answer.verdict.takes_payment()
        && modes.declines_now()
    {
        submission.answer = Answer::new(
            submission.gateway,
            Verdict::Declined(DeclineReason::DoNotHonor),
        );
    }
    // A lost answer: the gateway charges, but what reaches Paygate is a decline.
    let charged_anyway = submission.scenario == Scenario::Approve
        && submission.answer.verdict.takes_payment()
        && modes.lost_answer;
    if charged_anyway {
        submission.answer = Answer::new(
            submission.gateway,
            Verdict::Declined(DeclineReason::DoNotHonor),
        );
    }
    let key = (submission.gateway, submission.reference.clone());
    if sim.remember(|m| m.in_flight.contains(&key)) {
        return if modes.duplicate_in_flight {
            Reply::InFlight
        } else {
            Reply::Unavailable
        };
    }
    match modes.overload() {
        Some(hold) if sim.remember(|m| m.ledger.find(key.0, &key.1).is_none()) => {
            // Overloaded: the request is worked on in a task of its own, so it completes
            // (and charges) even after the caller stopped waiting.
            sim.remember(|m| m.in_flight.insert(key.clone()));
            let (done, reply) = tokio::sync::oneshot::channel();
            let worker = sim.clone();
            sim.tasks.spawn(async move {
                worker.pause(hold).await;
                let reply = take(&worker, submission, answer_delay, modes, charged_anyway).await;
                worker.remember(|m| m.in_flight.remove(&key));
                let _ = done.send(reply);
            });
            reply.await.unwrap_or(Reply::ProxyTimeout)
        }
        _ => take(sim, submission, answer_delay, modes, charged_anyway).await,
    }
}

/// Records a submit (the first for its reference charges), schedules its callback and
/// waits to answer as its scenario and the gateway's `modes` say.
async fn take(
    sim: &Sim,
    submission: Submission,
    answer_delay: Duration,
    modes: Modes,
    charged_anyway: bool,
) -> Reply {
    let Submission {
        gateway,
        reference,
        amount,
        currency,
        scenario,
        answer,
        callback,
    } = submission;
    let scheduled = answer
        .verdict
        .takes_payment()
        .then(|| schedule(sim, scenario, answer.verdict, callback));
    let books = Books {
        charged_anyway,
        ..Books::now(amount, &modes)
    };
    let charge = Charge {
        amount,
        currency,
        settle_after: scheduled.as_ref().map_or(Duration::ZERO, |s| s.delay),
    };
    let scheduled = scheduled.filter(|_| !modes.lost_callback);
    let (payment, send_now) = if scenario == Scenario::Stall {
        // The callback waits for the release too.
        (Payment::stalled(answer, charge, scheduled), None)
    } else {
        (Payment::new(answer, charge), scheduled)
    };
    let payment = payment.booked(books);
    let (entry, first) = sim.remember(|m| m.ledger.record(gateway, &reference, payment));
    if first {
        tracing::info!(?gateway, %reference, ?scenario, verdict = ?entry.answer.verdict, "payment submitted");
        if let Some(scheduled) = send_now {
            callback::send_later(sim, scheduled);
            if scenario == Scenario::CallbackFirst {
                sim.pause(CALLBACK_FIRST_LEAD).await;
            }
        }
    }

    if let Some(hold) = entry.hold {
        if !first && modes.duplicate_in_flight {
            return Reply::InFlight;
        }
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
        _ => Reply::Answer(entry.answer),
    }
}

/// A status query: `None` when the gateway has no payment for `reference`.
pub(crate) async fn query(sim: &Sim, gateway: Gateway, reference: &str) -> Option<Reply> {
    let (control, entry) = sim.remember(|m| (m.control.clone(), m.ledger.find(gateway, reference)));
    if control.unavailable() {
        return Some(Reply::Unavailable);
    }
    let entry = entry?;
    if let Some(hold) = entry.hold {
        if !released(sim, hold).await {
            return Some(Reply::ProxyTimeout);
        }
    }
    Some(if entry.settled {
        Reply::Settled(entry.answer)
    } else {
        Reply::Answer(entry.answer)
    })
}

/// When and how often the callback of a taken payment goes.
fn schedule(sim: &Sim, scenario: Scenario, verdict: Verdict, callback: Callback) -> Scheduled {
    let delay = match (scenario, verdict) {
        (Scenario::CallbackFirst, _) => Duration::ZERO,
        (_, Verdict::Pending) => sim.config.callback_delay * PENDING_CALLBACK_DELAYS,
        _ => sim.config.callback_delay,
    };
    let sends = if scenario == Scenario::DoubleCallback {
        2
    } else {
        1
    };
    Scheduled {
        callback,
        delay,
        sends,
    }
}

/// Waits until a stalled payment is released (`true`) or the simulator shuts down
/// (`false`: the held request ends as a proxy timeout rather than blocking shutdown).
async fn released(sim: &Sim, mut hold: watch::Receiver<bool>) -> bool {
    tokio::select! {
        released = async { hold.wait_for(|released| *released).await.is_ok() } => released,
        () = sim.shutdown.cancelled() => false,
    }
}

/// What a gateway answers a re-submit of a payment it is still working on.
pub(crate) fn in_flight() -> Response {
    (
        StatusCode::CONFLICT,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "a request with this reference is in progress",
    )
        .into_response()
}

/// What a proxy in front of any of the gateways answers when it gives up waiting: not
/// the gateway's format, since the gateway never answered.
pub(crate) fn proxy_timeout() -> Response {
    (
        StatusCode::GATEWAY_TIMEOUT,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Gateway Timeout",
    )
        .into_response()
}
