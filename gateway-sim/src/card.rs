//! The card acquirer, with a bank's semantics: `POST /card/charges` answers HTTP 200 with
//! a result code, `0` succeeded, `100` refused (`insufficient_funds`, `card_declined`),
//! `200` pending (confirmed later by the callback), and `GET /card/charges/{reference}`
//! answers the stored result, or `10` (captured) once a taken charge settled. The test card decides the verdict; the cents `.02`, `.03`,
//! `.06`, `.07` and the controls still decide the timing (see [`crate::flow`]).
//!
//! Refunds: `POST /card/refunds` `{"reference","charge_reference","amount","currency"}`
//! and `GET /card/refunds/{reference}` answer `0` refunded or `100` refused (see
//! [`crate::refunds`]).
//!
//! Card data is read once at the edge into the verdict it picks and its last four digits;
//! the number and CVV are never logged, stored or quoted in an error message.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::callback::Callback;
use crate::flow::{self, Reply, Submission};
use crate::outcome::{self, Answer, DeclineReason, Scenario, Verdict};
use crate::refunds;
use crate::state::{Gateway, Sim};

/// Test cards, as the acquirer's sandbox documents them.
const SUCCEEDS: &str = "4242424242424242";
const INSUFFICIENT_FUNDS: &str = "4000000000000002";
const PENDING: &str = "4000000000009995";
/// Refused with HTTP `402 Payment Required` and nothing charged, as many acquirers
/// answer a decline.
const PAYMENT_REQUIRED: &str = "4000000000000408";

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/card/charges", post(charge))
        .route("/card/charges/{reference}", get(status))
        .route("/card/refunds", post(refund))
        .route("/card/refunds/{reference}", get(refund_status))
}

/// A refund: its reference and the charge's.
#[derive(Debug, Deserialize)]
struct RefundRequest {
    reference: String,
    charge_reference: String,
    amount: Decimal,
    currency: String,
}

async fn refund(State(sim): State<Sim>, Json(request): Json<RefundRequest>) -> Response {
    let request = refunds::RefundRequest {
        gateway: Gateway::Card,
        reference: request.reference,
        payment_reference: request.charge_reference,
        amount: request.amount,
        currency: request.currency,
        callback: None,
        callback_url: None,
    };
    render_refund(refunds::refund(&sim, request).await)
}

async fn refund_status(State(sim): State<Sim>, Path(reference): Path<String>) -> Response {
    match refunds::query(&sim, Gateway::Card, &reference).await {
        Some(reply) => render_refund(reply),
        None => refusal(StatusCode::NOT_FOUND, "unknown reference"),
    }
}

/// A refund's bank code: `0` refunded, `100` refused.
fn render_refund(reply: Reply) -> Response {
    match reply {
        Reply::Settled(answer) => Json(ChargeAnswer {
            code: "0",
            message: "refunded",
            transaction_id: answer.txn_id.as_deref(),
        })
        .into_response(),
        Reply::Answer(answer) => Json(ChargeAnswer {
            code: "100",
            message: answer.reason().unwrap_or("refused"),
            transaction_id: None,
        })
        .into_response(),
        other => render(other),
    }
}

/// A charge request without its card, which is read apart (see [`Card::parse`]).
#[derive(Debug, Deserialize)]
struct ChargeRequest {
    reference: String,
    amount: Decimal,
    currency: String,
    callback_url: String,
}

/// The card as sent. Deliberately not `Debug`: its fields must not reach a log line.
#[derive(Deserialize)]
struct RawCard {
    number: String,
    expiry_month: u8,
    expiry_year: u16,
    #[serde(default)]
    cvv: Option<String>,
}

/// A card as the acquirer keeps it: the verdict its number picks and its last four
/// digits, never the number or the CVV.
#[derive(Debug)]
struct Card {
    verdict: Verdict,
    last4: String,
    /// Declined with a `402` instead of a bank code.
    payment_required: bool,
}

impl Card {
    /// Reads the `card` object. Errors name what is wrong, never quote a value.
    fn parse(card: Value) -> Result<Card, &'static str> {
        let card: RawCard = serde_json::from_value(card)
            .map_err(|_| "card must be an object with number, expiry_month and expiry_year")?;
        let digits = |s: &str, lengths: std::ops::RangeInclusive<usize>| {
            lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(&card.number, 12..=19) {
            return Err("card.number must be 12 to 19 digits");
        }
        if !(1..=12).contains(&card.expiry_month) || card.expiry_year < 2000 {
            return Err("card expiry is invalid");
        }
        if card.cvv.as_deref().is_some_and(|cvv| !digits(cvv, 3..=4)) {
            return Err("card.cvv must be 3 or 4 digits");
        }
        let verdict = match card.number.as_str() {
            SUCCEEDS => Verdict::Approved,
            INSUFFICIENT_FUNDS => Verdict::Declined(DeclineReason::InsufficientFunds),
            PENDING => Verdict::Pending,
            _ => Verdict::Declined(DeclineReason::CardDeclined),
        };
        let last4 = card.number[card.number.len() - 4..].to_owned();
        let payment_required = card.number == PAYMENT_REQUIRED;
        Ok(Card {
            verdict,
            last4,
            payment_required,
        })
    }
}

async fn charge(State(sim): State<Sim>, body: Result<Json<Value>, JsonRejection>) -> Response {
    let (request, card) = match read(body) {
        Ok(read) => read,
        Err(refusal) => return refusal.into_response(),
    };
    if card.payment_required {
        return refusal(StatusCode::PAYMENT_REQUIRED, "insufficient_funds");
    }
    let scenario = Scenario::of(request.amount).for_card();
    let answer = Answer::new(Gateway::Card, card.verdict);
    tracing::debug!(reference = %request.reference, last4 = %card.last4, "card charge");
    let callback = Callback {
        gateway: Gateway::Card,
        url: request.callback_url.clone(),
        content_type: "application/json",
        body: notification(&request, &answer),
    };
    let submission = Submission {
        gateway: Gateway::Card,
        reference: request.reference,
        amount: request.amount,
        currency: request.currency.clone(),
        scenario,
        answer,
        callback,
    };
    render(flow::submit(&sim, submission).await)
}

/// A request refused before anything was done, in the acquirer's error shape.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: &'static str,
}

impl Refusal {
    fn bad_request(message: &'static str) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refusal(self.status, self.message)
    }
}

/// Splits the body into the charge and its card, each checked.
fn read(body: Result<Json<Value>, JsonRejection>) -> Result<(ChargeRequest, Card), Refusal> {
    let mut body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return Err(Refusal {
                status: rejection.status(),
                message: "the body is not JSON",
            })
        }
    };
    let card = body
        .get_mut("card")
        .map(Value::take)
        .ok_or(Refusal::bad_request("card is required"))?;
    let card = Card::parse(card).map_err(Refusal::bad_request)?;
    let request = serde_json::from_value(body).map_err(|_| {
        Refusal::bad_request("reference, amount, currency and callback_url are required")
    })?;
    Ok((request, card))
}

async fn status(State(sim): State<Sim>, Path(reference): Path<String>) -> Response {
    match flow::query(&sim, Gateway::Card, &reference).await {
        Some(reply) => render(reply),
        None => refusal(StatusCode::NOT_FOUND, "unknown reference"),
    }
}

/// The code of a status answer for a charge that was captured (settled).
const CAPTURED: &str = "10";

/// The acquirer's answer to a charge.
#[derive(Debug, Serialize)]
struct ChargeAnswer<'a> {
    code: &'static str,
    message: &'static str,
    transaction_id: Option<&'a str>,
}

fn render(reply: Reply) -> Response {
    match reply {
        Reply::InFlight => flow::in_flight(),
        Reply::Settled(answer) => Json(ChargeAnswer {
            code: CAPTURED,
            message: "captured",
            transaction_id: answer.txn_id.as_deref(),
        })
        .into_response(),
        Reply::Answer(answer) => {
            let (code, message) = match answer.verdict {
                Verdict::Approved => ("0", "approved"),
                Verdict::Pending => ("200", "pending"),
                Verdict::Declined(reason) => ("100", reason.as_str()),
            };
            Json(ChargeAnswer {
                code,
                message,
                transaction_id: answer.txn_id.as_deref(),
            })
            .into_response()
        }
        Reply::Unavailable => refusal(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable"),
        Reply::ProxyTimeout => flow::proxy_timeout(),
    }
}

/// The acquirer's error shape: the HTTP status as `code`, and a message.
fn refusal(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_str(), "message": message})),
    )
        .into_response()
}

/// The callback: a pending charge is confirmed as approved (`0`), like a succeeded one.
fn notification(request: &ChargeRequest, answer: &Answer) -> String {
    let (code, message) = match answer.verdict {
        Verdict::Approved | Verdict::Pending => ("0", "approved"),
        Verdict::Declined(reason) => ("100", reason.as_str()),
    };
    json!({
        "event_id": outcome::event_id(),
        "reference": request.reference,
        "transaction_id": answer.txn_id,
        "code": code,
        "amount": request.amount.to_string(),
        "currency": request.currency,
        "message": message,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(number: &str) -> Value {
        json!({"number": number, "expiry_month": 12, "expiry_year": 2030, "cvv": "123"})
    }

    #[test]
    fn the_test_cards_pick_their_verdicts() {
        let verdict = |number| Card::parse(card(number)).unwrap().verdict;
        assert_eq!(verdict(SUCCEEDS), Verdict::Approved);
        assert_eq!(verdict(PENDING), Verdict::Pending);
        assert_eq!(
            verdict(INSUFFICIENT_FUNDS),
            Verdict::Declined(DeclineReason::InsufficientFunds)
        );
        assert_eq!(
            verdict("5555555555554444"),
            Verdict::Declined(DeclineReason::CardDeclined)
        );
    }

    #[test]
    fn a_refused_card_is_never_quoted_back() {
        for hostile in [
            json!({"number": 4242424242424242u64, "expiry_month": 12, "expiry_year": 2030}),
            card("4242-4242-4242-4242"),
            json!({"number": "4242424242424242", "expiry_month": 13, "expiry_year": 2030}),
            json!({"number": "4242424242424242", "expiry_month": 1, "expiry_year": 2030, "cvv": "12a"}),
        ] {
            let message = Card::parse(hostile).unwrap_err();
            assert!(!message.contains("4242"), "{message}");
        }
    }

    #[test]
    fn only_the_last_four_digits_are_kept() {
        let card = Card::parse(card(SUCCEEDS)).unwrap();
        assert_eq!(card.last4, "4242");
        assert!(!format!("{card:?}").contains("42424242"));
    }
}
