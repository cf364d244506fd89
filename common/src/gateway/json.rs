//! The JSON REST gateway: `POST <base>/payments` with an `Idempotency-Key`,
//! `GET <base>/payments/<reference>` for the status, JSON callbacks; refunds alike under
//! `<base>/refunds`.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::http::{base, exchange, refused, server_error, unreadable, JSON_ACK};
use super::settlement::{self, Period, ReportError, ReportLine};
use super::{
    BoxFuture, Call, CallbackIdentity, CallbackNotice, CallbackParseError, CallbackResult, Gateway,
    Outcome, PaymentMethod, PaymentOrder, RefundOrder,
};

pub struct JsonGateway;

/// What the gateway answers to a payment or a status query.
#[derive(Debug, Deserialize)]
struct JsonAnswer {
    status: String,
    gateway_txn_id: Option<String>,
    reason: Option<String>,
}

/// Unknown fields are ignored: gateways add fields to their payloads without notice,
/// and a callback must never be refused for that.
#[derive(Debug, Deserialize)]
struct JsonCallback {
    event_id: String,
    reference: String,
    gateway_txn_id: Option<String>,
    status: String,
    amount: Decimal,
    currency: String,
    reason: Option<String>,
}

impl Gateway for JsonGateway {
    fn protocol(&self) -> &'static str {
        "json"
    }

    fn takes(&self, method: PaymentMethod) -> bool {
        method == PaymentMethod::Plain
    }

    fn submit<'a>(&'a self, call: Call<'a>, order: &'a PaymentOrder) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let url = format!("{}/payments", base(call));
            let request = call
                .http
                .post(url)
                .header("Idempotency-Key", &order.reference)
                .json(order);
            let code = &call.gateway.code;
            match exchange(request, call.gateway).await {
                Err(outcome) => outcome,
                Ok((status, _)) if status.is_server_error() => server_error(code, status),
                Ok((status, _))
                    if status.is_client_error() && status != StatusCode::PAYMENT_REQUIRED =>
                {
                    refused(code, status)
                }
                Ok((status, body)) => read_answer(code, status, &body),
            }
        })
    }

    fn query<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(ask(call, "payments", reference))
    }

    fn refund<'a>(&'a self, call: Call<'a>, order: &'a RefundOrder) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let url = format!("{}/refunds", base(call));
            let request = call
                .http
                .post(url)
                .header("Idempotency-Key", &order.reference)
                .json(order);
            let code = &call.gateway.code;
            match exchange(request, call.gateway).await {
                Err(outcome) => outcome,
                Ok((status, _)) if status.is_server_error() => server_error(code, status),
                Ok((status, _))
                    if status.is_client_error() && status != StatusCode::PAYMENT_REQUIRED =>
                {
                    refused(code, status)
                }
                Ok((status, body)) => read_answer(code, status, &body),
            }
        })
    }

    fn query_refund<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(ask(call, "refunds", reference))
    }

    /// `GET <base>/settlements?from=…&to=…`: a JSON list, read object by object.
    fn settlement_report<'a>(
        &'a self,
        call: Call<'a>,
        period: Period,
        lines: &'a tokio::sync::mpsc::Sender<ReportLine>,
    ) -> BoxFuture<'a, Result<u64, ReportError>> {
        Box::pin(async move {
            let url = settlement::url(call, &format!("settlements?{}", period.query()));
            let response = settlement::open(call.http.get(url), call.gateway).await?;
            settlement::read_json_list(response, &call.gateway.code, lines).await
        })
    }

    fn callback_identity(&self, body: &[u8]) -> Result<CallbackIdentity, CallbackParseError> {
        serde_json::from_slice(body)
            .map_err(|e| CallbackParseError::Malformed("json", e.to_string()))
    }

    fn parse_callback(&self, body: &[u8]) -> Result<CallbackNotice, CallbackParseError> {
        let callback: JsonCallback = serde_json::from_slice(body)
            .map_err(|e| CallbackParseError::Malformed("json", e.to_string()))?;
        let result = match callback.status.as_str() {
            "approved" | "completed" => CallbackResult::Approved,
            "declined" | "failed" => CallbackResult::Declined {
                reason: callback.reason.unwrap_or_else(|| "declined".to_owned()),
            },
            other => {
                return Err(CallbackParseError::Malformed(
                    "json",
                    format!("unknown status {other:?}"),
                ))
            }
        };
        Ok(CallbackNotice {
            event_id: callback.event_id,
            reference: callback.reference,
            gateway_txn_id: callback.gateway_txn_id,
            result,
            amount: callback.amount,
            currency: callback.currency,
        })
    }

    fn callback_ack(&self) -> (&'static str, &'static str) {
        JSON_ACK
    }
}

/// A status query about our `reference` under `resource` (`payments`, `refunds`).
async fn ask(call: Call<'_>, resource: &str, reference: &str) -> Outcome {
    let url = format!("{}/{resource}/{reference}", base(call));
    let code = &call.gateway.code;
    match exchange(call.http.get(url), call.gateway).await {
        Err(outcome) => outcome,
        Ok((StatusCode::NOT_FOUND, _)) => Outcome::Unknown,
        Ok((status, _))
            if status.is_server_error()
                || status.is_client_error() && status != StatusCode::PAYMENT_REQUIRED =>
        {
            server_error(code, status)
        }
        Ok((status, body)) => read_answer(code, status, &body),
    }
}

fn read_answer(code: &str, status: StatusCode, body: &[u8]) -> Outcome {
    let answer: JsonAnswer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(error) => return unreadable(code, status, error),
    };
    match (answer.status.as_str(), answer.gateway_txn_id) {
        ("accepted" | "approved" | "pending", Some(gateway_txn_id)) => {
            Outcome::Accepted { gateway_txn_id }
        }
        ("completed", Some(gateway_txn_id)) => Outcome::Completed { gateway_txn_id },
        ("declined" | "failed", _) => Outcome::Declined {
            reason: answer.reason.unwrap_or_else(|| "declined".to_owned()),
        },
        (other, _) => Outcome::Ambiguous {
            reason: format!("{code} answered an unknown status {other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparseable_answer_is_ambiguous_and_an_unknown_status_too() {
        let status = StatusCode::OK;
        assert!(matches!(
            read_answer("g", status, b"<html>"),
            Outcome::Ambiguous { .. }
        ));
        assert!(matches!(
            read_answer("g", status, br#"{"status":"maybe","gateway_txn_id":"x"}"#),
            Outcome::Ambiguous { .. }
        ));
        assert_eq!(
            read_answer(
                "g",
                status,
                br#"{"status":"accepted","gateway_txn_id":"x"}"#
            ),
            Outcome::Accepted {
                gateway_txn_id: "x".into()
            }
        );
    }

    #[test]
    fn a_json_callback_is_normalised() {
        let body = br#"{"event_id":"e1","reference":"txn_1","gateway_txn_id":"g1","status":"approved","amount":"10.00","currency":"USD","reason":null}"#;
        let notice = JsonGateway.parse_callback(body).unwrap();
        assert_eq!(notice.result, CallbackResult::Approved);
        assert_eq!(notice.amount.to_string(), "10.00");
        let declined = br#"{"event_id":"e2","reference":"txn_1","gateway_txn_id":null,"status":"declined","amount":"10.00","currency":"USD","reason":"insufficient_funds"}"#;
        assert_eq!(
            JsonGateway.parse_callback(declined).unwrap().result,
            CallbackResult::Declined {
                reason: "insufficient_funds".into()
            }
        );
    }

    #[test]
    fn a_json_callback_with_an_unknown_status_is_malformed_but_its_identity_still_reads() {
        let body = br#"{"event_id":"e1","reference":"txn_1","gateway_txn_id":"g1","status":"maybe","amount":"10.00","currency":"USD","reason":null}"#;
        assert!(matches!(
            JsonGateway.parse_callback(body),
            Err(CallbackParseError::Malformed(..))
        ));
        assert_eq!(
            JsonGateway.callback_identity(body).unwrap(),
            CallbackIdentity {
                event_id: "e1".into(),
                reference: "txn_1".into()
            }
        );
        assert!(JsonGateway
            .callback_identity(br#"{"status":"approved"}"#)
            .is_err());
    }

    #[test]
    fn a_json_callback_with_fields_we_do_not_know_is_still_read() {
        let extra = br#"{"event_id":"e1","reference":"txn_1","status":"approved","amount":"1","currency":"USD","surprise":1}"#;
        assert_eq!(
            JsonGateway.parse_callback(extra).unwrap().result,
            CallbackResult::Approved
        );
    }
}
