//! The JSON REST gateway, under `/json`:
//! - `POST /json/payments` `{"reference","amount","currency","callback_url",…}` answers
//!   200 `{"status":"accepted","gateway_txn_id":"sim_…","reason":null}` or 402
//!   `{"status":"declined","gateway_txn_id":null,"reason":"insufficient_funds"}`;
//! - `GET /json/payments/{reference}` answers the same (`"status":"completed"` once a
//!   taken payment settled), or 404 for an unknown reference;
//! - `POST /json/refunds` `{"reference","payment_reference","amount","currency"}` and
//!   `GET /json/refunds/{reference}` answer a refund the same way: `"completed"` once
//!   refunded, 402 `"declined"` with its reason, or 404 for an unknown reference;
//! - the callback is a signed JSON `{"event_id","reference","gateway_txn_id","status",
//!   "amount","currency","reason"}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;

use crate::callback::Callback;
use crate::flow::{self, Reply, Submission};
use crate::outcome::{self, Answer, Scenario};
use crate::refunds;
use crate::state::{Gateway, Sim};

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/json/payments", post(pay))
        .route("/json/payments/{reference}", get(status))
        .route("/json/refunds", post(refund))
        .route("/json/refunds/{reference}", get(refund_status))
}

/// A refund request: the refund's reference (its idempotency key) and the payment's.
#[derive(Debug, Deserialize)]
struct RefundRequest {
    reference: String,
    payment_reference: String,
    amount: Decimal,
    currency: String,
    /// Where to call back about the refund; none, no callback.
    callback_url: Option<String>,
}

async fn refund(State(sim): State<Sim>, Json(request): Json<RefundRequest>) -> Response {
    let request = refunds::RefundRequest {
        gateway: Gateway::Json,
        reference: request.reference,
        payment_reference: request.payment_reference,
        amount: request.amount,
        currency: request.currency,
        callback: Some(refund_notification),
        callback_url: request.callback_url,
    };
    render(refunds::refund(&sim, request).await)
}

/// The callback about a refund made: the refund's reference, `"completed"`.
fn refund_notification(request: &refunds::RefundRequest, answer: &Answer) -> Callback {
    Callback {
        gateway: Gateway::Json,
        url: request.callback_url.clone().unwrap_or_default(),
        content_type: "application/json",
        body: json!({
            "event_id": outcome::event_id(),
            "reference": request.reference,
            "gateway_txn_id": answer.txn_id,
            "status": "completed",
            "amount": request.amount.to_string(),
            "currency": request.currency,
            "reason": null,
        })
        .to_string(),
    }
}

async fn refund_status(State(sim): State<Sim>, Path(reference): Path<String>) -> Response {
    match refunds::query(&sim, Gateway::Json, &reference).await {
        Some(reply) => render(reply),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown reference"})),
        )
            .into_response(),
    }
}

/// A payment request; what else the caller sends (kind, country) changes nothing here.
#[derive(Debug, Deserialize)]
struct PayRequest {
    reference: String,
    amount: Decimal,
    currency: String,
    callback_url: String,
}

async fn pay(State(sim): State<Sim>, Json(request): Json<PayRequest>) -> Response {
    let scenario = Scenario::of(request.amount);
    let answer = Answer::new(Gateway::Json, scenario.verdict());
    let callback = Callback {
        gateway: Gateway::Json,
        url: request.callback_url.clone(),
        content_type: "application/json",
        body: notification(&request, &answer),
    };
    let submission = Submission {
        gateway: Gateway::Json,
        reference: request.reference,
        amount: request.amount,
        currency: request.currency,
        scenario,
        answer,
        callback,
    };
    render(flow::submit(&sim, submission).await)
}

async fn status(State(sim): State<Sim>, Path(reference): Path<String>) -> Response {
    match flow::query(&sim, Gateway::Json, &reference).await {
        Some(reply) => render(reply),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown reference"})),
        )
            .into_response(),
    }
}

fn render(reply: Reply) -> Response {
    match reply {
        Reply::Settled(answer) => {
            let body =
                json!({"status": "completed", "gateway_txn_id": answer.txn_id, "reason": null});
            (StatusCode::OK, Json(body)).into_response()
        }
        Reply::InFlight => flow::in_flight(),
        Reply::Answer(answer) => {
            let (status, code) = if answer.verdict.takes_payment() {
                ("accepted", StatusCode::OK)
            } else {
                ("declined", StatusCode::PAYMENT_REQUIRED)
            };
            let body = json!({
                "status": status,
                "gateway_txn_id": answer.txn_id,
                "reason": answer.reason(),
            });
            (code, Json(body)).into_response()
        }
        Reply::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "temporarily unavailable"})),
        )
            .into_response(),
        Reply::ProxyTimeout => flow::proxy_timeout(),
    }
}

fn notification(request: &PayRequest, answer: &Answer) -> String {
    let status = if answer.verdict.takes_payment() {
        "approved"
    } else {
        "declined"
    };
    json!({
        "event_id": outcome::event_id(),
        "reference": request.reference,
        "gateway_txn_id": answer.txn_id,
        "status": status,
        "amount": request.amount.to_string(),
        "currency": request.currency,
        "reason": answer.reason(),
    })
    .to_string()
}
