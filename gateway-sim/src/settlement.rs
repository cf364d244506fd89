//! Settlement reports, from the ledger: what each gateway's books say it charged and
//! refunded in a period `[from, to)` (RFC 3339), one line per operation and reference
//! — `reference`, `operation` (`charge`, `refund`), `payment_reference` (a refund's
//! payment), `amount`, `currency`, `fee` (2 % of a settled charge, rounded to the
//! cent; none on a refund), `status` (`settled`, `declined`), `settled_at`:
//! - the JSON gateway: `GET /json/settlements?from=&to=`, a JSON list;
//! - the SOAP gateway: `POST /soap/reports` with a `SettlementReport {From, To}`
//!   envelope, a `SettlementReportResponse` of `Item`s;
//! - the card acquirer: `GET /card/settlements.csv?from=&to=`, a CSV file with a header.
//!
//! The books follow the answers unless a control (see [`crate::control`]) made them go
//! wrong when the payment or refund was made: charged despite a declining answer,
//! settled at another amount, booked twice, paid twice, left out, booked as declined;
//! and `POST /control/charges` books a charge nobody asked for. `report_unavailable`
//! answers the report 503; `report_garbled` cuts it off half-way.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ledger::{Books, Charge, Payment};
use crate::outcome::{Answer, Verdict};
use crate::state::{Gateway, Sim};

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/json/settlements", get(json_report))
        .route("/card/settlements.csv", get(csv_report))
        .route("/soap/reports", post(soap_report))
}

/// A report's period.
#[derive(Debug, Deserialize)]
struct Period {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// One line of a report.
#[derive(Debug, Serialize)]
struct Line {
    reference: String,
    operation: &'static str,
    payment_reference: String,
    amount: String,
    currency: String,
    fee: String,
    status: &'static str,
    settled_at: String,
}

/// The fee on a settled charge: 2 %, to the cent.
fn fee(amount: Decimal) -> Decimal {
    (amount * Decimal::new(2, 2)).round_dp(2)
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn charge_lines(reference: &str, payment: &Payment) -> Vec<Line> {
    let books = &payment.books;
    let line = |status: &'static str| Line {
        reference: reference.to_owned(),
        operation: "charge",
        payment_reference: String::new(),
        amount: books.amount.to_string(),
        currency: payment.currency().to_owned(),
        fee: if status == "settled" {
            fee(books.amount).to_string()
        } else {
            "0".to_owned()
        },
        status,
        settled_at: stamp(books.at),
    };
    if books.entries == 0 {
        return Vec::new();
    }
    if !payment.charged_in_books() || books.declined {
        return vec![line("declined")];
    }
    (0..books.entries).map(|_| line("settled")).collect()
}

/// Every line of `gateway`'s books in `period`, oldest first.
fn lines(sim: &Sim, gateway: Gateway, period: &Period) -> Vec<Line> {
    let within = |at: DateTime<Utc>| at >= period.from && at < period.to;
    sim.remember(|m| {
        let mut lines: Vec<Line> = m
            .ledger
            .booked(gateway)
            .filter(|(_, p)| within(p.books.at))
            .flat_map(|(reference, p)| charge_lines(reference, p))
            .collect();
        for refund in m
            .refunds
            .booked(gateway)
            .into_iter()
            .filter(|r| within(r.at))
        {
            let copies = if refund.refunded { refund.paid } else { 1 };
            for _ in 0..copies {
                lines.push(Line {
                    reference: refund.reference.clone(),
                    operation: "refund",
                    payment_reference: refund.payment_reference.clone(),
                    amount: refund.amount.to_string(),
                    currency: refund.currency.clone(),
                    fee: "0".to_owned(),
                    status: if refund.refunded {
                        "settled"
                    } else {
                        "declined"
                    },
                    settled_at: stamp(refund.at),
                });
            }
        }
        lines
    })
}

/// `Some(response)` when the gateway's report controls say it does not answer.
fn unavailable(sim: &Sim, gateway: Gateway) -> Option<Response> {
    let modes = sim.remember(|m| m.control.modes(gateway));
    modes
        .report_unavailable
        .then(|| (StatusCode::SERVICE_UNAVAILABLE, "reports are unavailable").into_response())
}

/// The body, cut off half-way when the gateway's report is to break off.
fn maybe_garbled(sim: &Sim, gateway: Gateway, body: String) -> String {
    if sim.remember(|m| m.control.modes(gateway).report_garbled) {
        let half = body.len() / 2;
        let cut = (0..=half)
            .rev()
            .find(|at| body.is_char_boundary(*at))
            .unwrap_or(0);
        body[..cut].to_owned()
    } else {
        body
    }
}

async fn json_report(State(sim): State<Sim>, Query(period): Query<Period>) -> Response {
    if let Some(response) = unavailable(&sim, Gateway::Json) {
        return response;
    }
    let lines = lines(&sim, Gateway::Json, &period);
    let body = serde_json::to_string(&lines).unwrap_or_else(|_| "[]".to_owned());
    (
        [(header::CONTENT_TYPE, "application/json")],
        maybe_garbled(&sim, Gateway::Json, body),
    )
        .into_response()
}

async fn csv_report(State(sim): State<Sim>, Query(period): Query<Period>) -> Response {
    if let Some(response) = unavailable(&sim, Gateway::Card) {
        return response;
    }
    let mut body = String::from(
        "reference,operation,payment_reference,amount,currency,fee,status,settled_at\n",
    );
    for line in lines(&sim, Gateway::Card, &period) {
        body.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            line.reference,
            line.operation,
            line.payment_reference,
            line.amount,
            line.currency,
            line.fee,
            line.status,
            line.settled_at
        ));
    }
    (
        [(header::CONTENT_TYPE, "text/csv")],
        maybe_garbled(&sim, Gateway::Card, body),
    )
        .into_response()
}

/// Reads `From` and `To` out of a `SettlementReport` envelope.
fn soap_period(body: &[u8]) -> Option<Period> {
    let text = std::str::from_utf8(body).ok()?;
    let field = |name: &str| {
        let open = text
            .find(&format!(":{name}>"))
            .or_else(|| text.find(&format!("<{name}>")))?;
        let start = open + text[open..].find('>')? + 1;
        let end = start + text[start..].find('<')?;
        DateTime::parse_from_rfc3339(text[start..end].trim())
            .ok()
            .map(|at| at.with_timezone(&Utc))
    };
    text.contains("SettlementReport").then_some(())?;
    Some(Period {
        from: field("From")?,
        to: field("To")?,
    })
}

async fn soap_report(State(sim): State<Sim>, body: Bytes) -> Response {
    if let Some(response) = unavailable(&sim, Gateway::Soap) {
        return response;
    }
    let Some(period) = soap_period(&body) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            format!(
                r#"<soap:Envelope xmlns:soap="{}"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>not a SettlementReport</faultstring></soap:Fault></soap:Body></soap:Envelope>"#,
                crate::SOAP_ENVELOPE_NS
            ),
        )
            .into_response();
    };
    let mut items = String::new();
    for line in lines(&sim, Gateway::Soap, &period) {
        items.push_str(&format!(
            "<pay:Item><pay:Reference>{}</pay:Reference><pay:Operation>{}</pay:Operation><pay:PaymentReference>{}</pay:PaymentReference><pay:Amount>{}</pay:Amount><pay:Currency>{}</pay:Currency><pay:Fee>{}</pay:Fee><pay:Status>{}</pay:Status><pay:SettledAt>{}</pay:SettledAt></pay:Item>",
            line.reference,
            line.operation,
            line.payment_reference,
            line.amount,
            line.currency,
            line.fee,
            line.status,
            line.settled_at
        ));
    }
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{}" xmlns:pay="{}"><soap:Body><pay:SettlementReportResponse>{items}</pay:SettlementReportResponse></soap:Body></soap:Envelope>"#,
        crate::SOAP_ENVELOPE_NS,
        crate::PAYMENTS_NS
    );
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        maybe_garbled(&sim, Gateway::Soap, body),
    )
        .into_response()
}

/// `POST /control/charges`: a charge booked with no payment asked for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnsolicitedCharge {
    gateway: Gateway,
    reference: String,
    amount: Decimal,
    currency: String,
}

pub(crate) async fn unsolicited_charge(
    State(sim): State<Sim>,
    charge: Result<Json<UnsolicitedCharge>, JsonRejection>,
) -> Response {
    let charge = match charge {
        Ok(Json(charge)) => charge,
        Err(rejection) => {
            return (
                rejection.status(),
                Json(json!({"error": rejection.body_text()})),
            )
                .into_response()
        }
    };
    let answer = Answer::new(charge.gateway, Verdict::Approved);
    let payment = Payment::new(
        answer,
        Charge {
            amount: charge.amount,
            currency: charge.currency.clone(),
            settle_after: std::time::Duration::ZERO,
        },
    )
    .booked(Books::now(charge.amount, &crate::control::Modes::default()));
    let (_, first) = sim.remember(|m| m.ledger.record(charge.gateway, &charge.reference, payment));
    if !first {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "the gateway already has a payment under this reference"})),
        )
            .into_response();
    }
    (
        StatusCode::CREATED,
        Json(json!({"gateway": charge.gateway, "reference": charge.reference, "booked": true})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soap_report_request_gives_its_period() {
        let body = br#"<soap:Envelope><soap:Body><pay:SettlementReport><pay:From>2026-12-05T00:00:00.000Z</pay:From><pay:To>2026-12-06T00:00:00.000Z</pay:To></pay:SettlementReport></soap:Body></soap:Envelope>"#;
        let period = soap_period(body).unwrap();
        assert_eq!(stamp(period.from), "2026-12-05T00:00:00.000Z");
        assert_eq!(stamp(period.to), "2026-12-06T00:00:00.000Z");
        assert!(soap_period(b"<QueryPayment/>").is_none());
    }

    #[test]
    fn the_fee_is_two_percent_to_the_cent() {
        assert_eq!(fee(Decimal::new(1050, 2)), Decimal::new(21, 2));
    }
}
