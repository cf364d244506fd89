//! A card acquirer, with the bank semantics of the card networks' test acquirers:
//! `POST <base>/charges` answers a bank code — `"0"` succeeded, `"100"` failed,
//! `"200"` pending (settled later by callback) — and `GET <base>/charges/<reference>`
//! tells the status. The card number is decrypted only into the request body. A
//! refund (`POST <base>/refunds`, `GET <base>/refunds/<reference>`) answers a bank code
//! too: `"0"` refunded, `"200"` pending, `"100"` refused.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::json;

use super::http::{base, exchange, refused, server_error, unreadable, JSON_ACK};
use super::settlement::{self, Period, ReportError, ReportLine};
use super::{
    BoxFuture, Call, CallbackIdentity, CallbackNotice, CallbackParseError, CallbackResult, Gateway,
    Outcome, PaymentMethod, PaymentOrder, RefundOrder,
};

pub struct CardAcquirer;

/// The acquirer's answer to a charge or a status query.
#[derive(Debug, Deserialize)]
struct BankAnswer {
    code: String,
    message: Option<String>,
    transaction_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BankCallback {
    event_id: String,
    reference: String,
    transaction_id: Option<String>,
    code: String,
    amount: Decimal,
    currency: String,
    message: Option<String>,
}

impl Gateway for CardAcquirer {
    fn protocol(&self) -> &'static str {
        "card"
    }

    fn takes(&self, method: PaymentMethod) -> bool {
        method == PaymentMethod::Card
    }

    fn submit<'a>(&'a self, call: Call<'a>, order: &'a PaymentOrder) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let code = &call.gateway.code;
            let Some(card) = &order.card else {
                // Routing never sends a card-less payment here; nothing was sent.
                return Outcome::Unavailable {
                    reason: format!("{code} takes only card payments"),
                };
            };
            let body = json!({
                "reference": order.reference,
                "amount": order.amount.to_string(),
                "currency": order.currency,
                "kind": order.kind.as_str(),
                "callback_url": order.callback_url,
                "card": {
                    "number": card.number.expose_secret(),
                    "expiry_month": card.expiry_month,
                    "expiry_year": card.expiry_year,
                    "holder_name": card.holder_name,
                    "cvv": card.cvv.as_ref().map(|c| c.expose_secret()),
                },
            });
            post_order(call, "charges", &order.reference, &body, read_answer).await
        })
    }

    fn query<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let code = &call.gateway.code;
            let url = format!("{}/charges/{reference}", base(call));
            match exchange(call.http.get(url), call.gateway).await {
                Err(outcome) => outcome,
                Ok((StatusCode::NOT_FOUND, _)) => Outcome::Unknown,
                Ok((status, _)) if !status.is_success() => server_error(code, status),
                Ok((status, body)) => read_answer(code, status, &body),
            }
        })
    }

    fn refund<'a>(&'a self, call: Call<'a>, order: &'a RefundOrder) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let body = json!({
                "reference": order.reference,
                "charge_reference": order.payment_reference,
                "amount": order.amount.to_string(),
                "currency": order.currency,
            });
            post_order(call, "refunds", &order.reference, &body, read_refund_answer).await
        })
    }

    fn query_refund<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let code = &call.gateway.code;
            let url = format!("{}/refunds/{reference}", base(call));
            match exchange(call.http.get(url), call.gateway).await {
                Err(outcome) => outcome,
                Ok((StatusCode::NOT_FOUND, _)) => Outcome::Unknown,
                Ok((StatusCode::PAYMENT_REQUIRED, body)) => payment_required(&body),
                Ok((status, _)) if !status.is_success() => server_error(code, status),
                Ok((status, body)) => read_refund_answer(code, status, &body),
            }
        })
    }

    /// `GET <base>/settlements.csv?from=…&to=…`: a CSV file, read line by line.
    fn settlement_report<'a>(
        &'a self,
        call: Call<'a>,
        period: Period,
        lines: &'a tokio::sync::mpsc::Sender<ReportLine>,
    ) -> BoxFuture<'a, Result<u64, ReportError>> {
        Box::pin(async move {
            let url = settlement::url(call, &format!("settlements.csv?{}", period.query()));
            let response = settlement::open(call.http.get(url), call.gateway).await?;
            settlement::read_csv(response, &call.gateway.code, lines).await
        })
    }

    fn callback_identity(&self, body: &[u8]) -> Result<CallbackIdentity, CallbackParseError> {
        serde_json::from_slice(body)
            .map_err(|e| CallbackParseError::Malformed("card", e.to_string()))
    }

    fn parse_callback(&self, body: &[u8]) -> Result<CallbackNotice, CallbackParseError> {
        let callback: BankCallback = serde_json::from_slice(body)
            .map_err(|e| CallbackParseError::Malformed("card", e.to_string()))?;
        let result = match callback.code.as_str() {
            "0" => CallbackResult::Approved,
            "100" => CallbackResult::Declined {
                reason: callback.message.unwrap_or_else(|| "declined".to_owned()),
            },
            other => {
                return Err(CallbackParseError::Malformed(
                    "card",
                    format!("bank code {other:?} is not a final result"),
                ))
            }
        };
        Ok(CallbackNotice {
            event_id: callback.event_id,
            reference: callback.reference,
            gateway_txn_id: callback.transaction_id,
            result,
            amount: callback.amount,
            currency: callback.currency,
        })
    }

    fn callback_ack(&self) -> (&'static str, &'static str) {
        JSON_ACK
    }
}

/// Posts a charge or a refund under its reference as the idempotency key and reads
/// what came back: a 402 is the acquirer's decline, other refusals and server errors
/// as every adapter reads them, and a success by `read`.
async fn post_order(
    call: Call<'_>,
    path: &str,
    reference: &str,
    body: &serde_json::Value,
    read: fn(&str, StatusCode, &[u8]) -> Outcome,
) -> Outcome {
    let code = &call.gateway.code;
    let request = call
        .http
        .post(format!("{}/{path}", base(call)))
        .header("Idempotency-Key", reference)
        .json(body);
    match exchange(request, call.gateway).await {
        Err(outcome) => outcome,
        Ok((StatusCode::PAYMENT_REQUIRED, body)) => payment_required(&body),
        Ok((status, _)) if status.is_server_error() => server_error(code, status),
        Ok((status, _)) if status.is_client_error() => refused(code, status),
        Ok((status, body)) => read(code, status, &body),
    }
}

/// `402 Payment Required` to a charge: the acquirer refused the card (insufficient
/// funds, a blocked card), which is how many acquirers answer a decline. It is the
/// customer's card saying no, not an acquirer that took nothing and may be passed over:
/// a decline, with the reason the body gives (`decline_code`, `reason` or `message`).
fn payment_required(body: &[u8]) -> Outcome {
    #[derive(Deserialize)]
    struct Refusal {
        decline_code: Option<String>,
        reason: Option<String>,
        message: Option<String>,
    }
    let reason = serde_json::from_slice::<Refusal>(body)
        .ok()
        .and_then(|r| r.decline_code.or(r.reason).or(r.message))
        .map(|r| r.trim().chars().take(200).collect::<String>())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "payment_required".to_owned());
    Outcome::Declined { reason }
}

/// Bank codes: `"0"` succeeded and `"200"` pending are both taken (the callback
/// settles them); `"10"` captured (a status answer) is taken and settled; `"100"`
/// failed is a decline.
fn read_answer(code: &str, status: StatusCode, body: &[u8]) -> Outcome {
    let answer: BankAnswer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(error) => return unreadable(code, status, error),
    };
    match (answer.code.as_str(), answer.transaction_id) {
        ("0" | "200", Some(gateway_txn_id)) => Outcome::Accepted { gateway_txn_id },
        ("10", Some(gateway_txn_id)) => Outcome::Completed { gateway_txn_id },
        ("100", _) => Outcome::Declined {
            reason: answer.message.unwrap_or_else(|| "declined".to_owned()),
        },
        (other, _) => Outcome::Ambiguous {
            reason: format!("{code} answered bank code {other:?}"),
        },
    }
}

/// A refund's bank codes: `"0"` refunded (settled), `"200"` pending there, `"100"`
/// refused.
fn read_refund_answer(code: &str, status: StatusCode, body: &[u8]) -> Outcome {
    let answer: BankAnswer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(error) => return unreadable(code, status, error),
    };
    match (answer.code.as_str(), answer.transaction_id) {
        ("0", Some(gateway_txn_id)) => Outcome::Completed { gateway_txn_id },
        ("200", Some(gateway_txn_id)) => Outcome::Accepted { gateway_txn_id },
        ("100", _) => Outcome::Declined {
            reason: answer.message.unwrap_or_else(|| "declined".to_owned()),
        },
        (other, _) => Outcome::Ambiguous {
            reason: format!("{code} answered bank code {other:?} to a refund"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refunds_bank_code_zero_is_refunded_and_an_unknown_code_is_ambiguous() {
        let ok = StatusCode::OK;
        assert_eq!(
            read_refund_answer("acq", ok, br#"{"code":"0","transaction_id":"r1"}"#),
            Outcome::Completed {
                gateway_txn_id: "r1".into()
            }
        );
        assert!(matches!(
            read_refund_answer("acq", ok, br#"{"code":"100","message":"exceeds_charge"}"#),
            Outcome::Declined { .. }
        ));
        assert!(matches!(
            read_refund_answer("acq", ok, br#"{"code":"7","transaction_id":"r1"}"#),
            Outcome::Ambiguous { .. }
        ));
    }

    #[test]
    fn a_402_is_a_decline_with_the_reason_the_body_gives() {
        assert_eq!(
            payment_required(br#"{"code":"402","message":"insufficient_funds"}"#),
            Outcome::Declined {
                reason: "insufficient_funds".into()
            }
        );
        assert_eq!(
            payment_required(br#"{"error":"x","decline_code":"card_blocked","message":"no"}"#),
            Outcome::Declined {
                reason: "card_blocked".into()
            }
        );
        assert_eq!(
            payment_required(b"<html>Payment Required</html>"),
            Outcome::Declined {
                reason: "payment_required".into()
            },
            "no readable reason: still a decline"
        );
    }

    #[test]
    fn bank_codes_map_to_outcomes() {
        let ok = StatusCode::OK;
        assert_eq!(
            read_answer(
                "c",
                ok,
                br#"{"code":"0","message":"ok","transaction_id":"a1"}"#
            ),
            Outcome::Accepted {
                gateway_txn_id: "a1".into()
            }
        );
        assert_eq!(
            read_answer("c", ok, br#"{"code":"200","transaction_id":"a2"}"#),
            Outcome::Accepted {
                gateway_txn_id: "a2".into()
            }
        );
        assert_eq!(
            read_answer(
                "c",
                ok,
                br#"{"code":"100","message":"insufficient_funds","transaction_id":null}"#
            ),
            Outcome::Declined {
                reason: "insufficient_funds".into()
            }
        );
        assert!(matches!(
            read_answer("c", ok, br#"{"code":"999"}"#),
            Outcome::Ambiguous { .. }
        ));
    }

    #[test]
    fn a_card_callback_with_a_pending_code_is_not_a_result() {
        let pending = br#"{"event_id":"e","reference":"txn_1","transaction_id":"a","code":"200","amount":"1","currency":"USD"}"#;
        assert!(CardAcquirer.parse_callback(pending).is_err());
        assert_eq!(
            CardAcquirer.callback_identity(pending).unwrap().event_id,
            "e"
        );
    }
}
