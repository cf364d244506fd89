//! Payment gateways: their stored configuration and the adapter of each protocol, which
//! turns a payment into the gateway's request, its answer into an [`Outcome`], and its
//! callback into a [`CallbackNotice`]. The payment-processor submits, the api checks
//! callback signatures, the callback-processor applies what callbacks say.
//!
//! The JSON REST protocol is implemented here; `soap` and `card` gateways are stored
//! and routed to but answer as unavailable until their adapters exist.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use crate::domain::{DomainError, Kind};

/// A row of `gateway`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GatewayRecord {
    pub code: String,
    #[sqlx(try_from = "String")]
    pub protocol: Protocol,
    /// Where its API lives; paths are appended by the adapter.
    pub base_url: String,
    /// Checks the signature of its callbacks.
    pub callback_secret: String,
    pub timeout_ms: i32,
    pub enabled: bool,
}

impl GatewayRecord {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.timeout_ms).unwrap_or(10_000))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Json,
    Soap,
    Card,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Soap => "soap",
            Protocol::Card => "card",
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "json" => Ok(Protocol::Json),
            "soap" => Ok(Protocol::Soap),
            "card" => Ok(Protocol::Card),
            _ => Err(DomainError::UnknownVariant(s, "gateway protocol")),
        }
    }
}

const COLUMNS: &str = "code, protocol, base_url, callback_secret, timeout_ms, enabled";

/// Reads one gateway by code.
pub async fn find<'e>(
    executor: impl PgExecutor<'e>,
    code: &str,
) -> sqlx::Result<Option<GatewayRecord>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM gateway WHERE code = $1"))
        .bind(code)
        .fetch_optional(executor)
        .await
}

/// A gateway's configuration, as an operator sets it.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    pub code: String,
    pub protocol: Protocol,
    pub base_url: String,
    pub callback_secret: String,
    pub timeout_ms: i32,
    pub enabled: bool,
}

/// Creates or replaces a gateway.
pub async fn upsert<'e>(
    executor: impl PgExecutor<'e>,
    gateway: &GatewayConfig,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO gateway (code, protocol, base_url, callback_secret, timeout_ms, enabled)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (code) DO UPDATE
            SET protocol = EXCLUDED.protocol, base_url = EXCLUDED.base_url,
                callback_secret = EXCLUDED.callback_secret, timeout_ms = EXCLUDED.timeout_ms,
                enabled = EXCLUDED.enabled, updated_at = now()",
    )
    .bind(&gateway.code)
    .bind(gateway.protocol.as_str())
    .bind(&gateway.base_url)
    .bind(&gateway.callback_secret)
    .bind(gateway.timeout_ms)
    .bind(gateway.enabled)
    .execute(executor)
    .await?;
    Ok(())
}

/// A route: for payments matching (country, currency, kind) — `None` matches anything,
/// and a route without a country is a default route — try `gateway_code` at `priority`.
#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    pub country: Option<String>,
    pub currency: Option<String>,
    pub kind: Option<Kind>,
    pub priority: i32,
    pub gateway_code: String,
}

pub async fn upsert_route<'e>(executor: impl PgExecutor<'e>, route: &Route) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO gateway_route (country, currency, kind, priority, gateway_code)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT ON CONSTRAINT gateway_route_unique DO UPDATE SET priority = EXCLUDED.priority",
    )
    .bind(&route.country)
    .bind(&route.currency)
    .bind(route.kind.map(|k| k.as_str()))
    .bind(route.priority)
    .bind(&route.gateway_code)
    .execute(executor)
    .await?;
    Ok(())
}

/// What we ask a gateway to do.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentOrder {
    /// Our transaction id: the gateway's idempotency reference.
    pub reference: String,
    pub amount: Decimal,
    pub currency: String,
    pub kind: Kind,
    pub country: Option<String>,
    /// Where the gateway posts its callback.
    pub callback_url: String,
}

/// How a gateway answered a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Taken; the result follows by callback.
    Accepted { gateway_txn_id: String },
    /// Refused for a business reason (funds, risk): final, no other gateway is tried.
    Declined { reason: String },
    /// Not taken for a technical reason (connect error, 5xx): safe to try the next gateway.
    Unavailable { reason: String },
    /// The request went out but no answer came back: the gateway may have taken it.
    Ambiguous { reason: String },
}

/// What the JSON gateway answers to a payment or a status query.
#[derive(Debug, Deserialize)]
struct JsonAnswer {
    status: String,
    gateway_txn_id: Option<String>,
    reason: Option<String>,
}

/// Submits `order` to `gateway`, with the gateway's timeout.
pub async fn submit(
    http: &reqwest::Client,
    gateway: &GatewayRecord,
    order: &PaymentOrder,
) -> Outcome {
    match gateway.protocol {
        Protocol::Json => submit_json(http, gateway, order).await,
        other => Outcome::Unavailable {
            reason: format!("no adapter for the {} protocol yet", other.as_str()),
        },
    }
}

async fn submit_json(
    http: &reqwest::Client,
    gateway: &GatewayRecord,
    order: &PaymentOrder,
) -> Outcome {
    let url = format!("{}/payments", gateway.base_url.trim_end_matches('/'));
    let sent = http
        .post(&url)
        .timeout(gateway.timeout())
        .header("Idempotency-Key", &order.reference)
        .json(order)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) if error.is_timeout() => {
            return Outcome::Ambiguous {
                reason: format!("{} timed out", gateway.code),
            }
        }
        Err(error) if error.is_connect() => {
            return Outcome::Unavailable {
                reason: format!("cannot reach {}", gateway.code),
            }
        }
        Err(error) => {
            // The request may have been written before the failure.
            return Outcome::Ambiguous {
                reason: format!("{}: {error}", gateway.code),
            };
        }
    };
    let status = response.status();
    if status.is_server_error() {
        return Outcome::Unavailable {
            reason: format!("{} answered {status}", gateway.code),
        };
    }
    let answer = match response.json::<JsonAnswer>().await {
        Ok(answer) => answer,
        Err(error) if error.is_timeout() => {
            return Outcome::Ambiguous {
                reason: format!("{} timed out", gateway.code),
            }
        }
        Err(_) => {
            return Outcome::Ambiguous {
                reason: format!("{} answered {status} with an unreadable body", gateway.code),
            }
        }
    };
    match (answer.status.as_str(), answer.gateway_txn_id) {
        ("accepted" | "approved" | "pending", Some(gateway_txn_id)) => {
            Outcome::Accepted { gateway_txn_id }
        }
        ("declined", _) => Outcome::Declined {
            reason: answer.reason.unwrap_or_else(|| "declined".to_owned()),
        },
        (other, _) => Outcome::Ambiguous {
            reason: format!("{} answered an unknown status {other:?}", gateway.code),
        },
    }
}

/// The gateway's result, as its callback tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    Approved,
    Declined { reason: String },
}

/// A callback, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackNotice {
    /// The gateway's id for this notification: two deliveries of it are one callback.
    pub event_id: String,
    /// Our transaction id, as we sent it.
    pub reference: String,
    pub gateway_txn_id: Option<String>,
    pub result: CallbackResult,
    pub amount: Decimal,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackParseError {
    #[error("the callback body is not what the {0} protocol sends: {1}")]
    Malformed(&'static str, String),
    #[error("no adapter for the {0} protocol yet")]
    Unsupported(&'static str),
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

/// What the api needs to store a callback: whose it is and the gateway's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallbackIdentity {
    pub event_id: String,
    pub reference: String,
}

/// Reads only the identity of a callback (whose signature was already checked), so
/// that the raw body is stored even when the rest of it is something the adapter will
/// refuse; the callback-processor then keeps it as rejected, with the reason.
pub fn callback_identity(
    protocol: Protocol,
    body: &[u8],
) -> Result<CallbackIdentity, CallbackParseError> {
    match protocol {
        Protocol::Json => serde_json::from_slice(body)
            .map_err(|e| CallbackParseError::Malformed("json", e.to_string())),
        other => Err(CallbackParseError::Unsupported(other.as_str())),
    }
}

/// Reads a callback body (whose signature was already checked).
pub fn parse_callback(
    protocol: Protocol,
    body: &[u8],
) -> Result<CallbackNotice, CallbackParseError> {
    match protocol {
        Protocol::Json => {
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
        other => Err(CallbackParseError::Unsupported(other.as_str())),
    }
}

/// The acknowledgement a gateway expects for a callback: content type and body.
pub fn callback_ack(protocol: Protocol) -> (&'static str, &'static str) {
    match protocol {
        Protocol::Json | Protocol::Card => ("application/json", r#"{"received":true}"#),
        Protocol::Soap => (
            "text/xml; charset=utf-8",
            r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><CallbackAck><Received>true</Received></CallbackAck></soap:Body></soap:Envelope>"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_callback_is_normalised() {
        let body = br#"{"event_id":"e1","reference":"txn_1","gateway_txn_id":"g1","status":"approved","amount":"10.00","currency":"USD","reason":null}"#;
        let notice = parse_callback(Protocol::Json, body).unwrap();
        assert_eq!(notice.result, CallbackResult::Approved);
        assert_eq!(notice.amount.to_string(), "10.00");
        let declined = br#"{"event_id":"e2","reference":"txn_1","gateway_txn_id":null,"status":"declined","amount":"10.00","currency":"USD","reason":"insufficient_funds"}"#;
        assert_eq!(
            parse_callback(Protocol::Json, declined).unwrap().result,
            CallbackResult::Declined {
                reason: "insufficient_funds".into()
            }
        );
    }

    #[test]
    fn a_json_callback_with_an_unknown_status_is_malformed_but_its_identity_still_reads() {
        let body = br#"{"event_id":"e1","reference":"txn_1","gateway_txn_id":"g1","status":"maybe","amount":"10.00","currency":"USD","reason":null}"#;
        assert!(matches!(
            parse_callback(Protocol::Json, body),
            Err(CallbackParseError::Malformed(..))
        ));
        assert_eq!(
            callback_identity(Protocol::Json, body).unwrap(),
            CallbackIdentity {
                event_id: "e1".into(),
                reference: "txn_1".into()
            }
        );
        assert!(callback_identity(Protocol::Json, br#"{"status":"approved"}"#).is_err());
    }

    #[test]
    fn a_json_callback_with_fields_we_do_not_know_is_still_read() {
        let extra = br#"{"event_id":"e1","reference":"txn_1","status":"approved","amount":"1","currency":"USD","surprise":1}"#;
        assert_eq!(
            parse_callback(Protocol::Json, extra).unwrap().result,
            CallbackResult::Approved
        );
    }
}
