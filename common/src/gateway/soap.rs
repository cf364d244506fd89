//! The SOAP 1.1 gateway: one endpoint (`POST <base>`), `SubmitPayment`,
//! `QueryPayment`, `RefundPayment` and `QueryRefund` operations in real envelopes with namespaces, `soap:Fault`s mapped to
//! our outcome classes, and SOAP callbacks acknowledged with a SOAP envelope.
//!
//! Bodies are written and read with quick-xml's serde support, never string search.
//! Its deserializer matches local names, so the envelope's namespace is checked once,
//! with a namespace-aware reader, before the body is read; a DOCTYPE (and with it any
//! entity declaration) is refused there too.

use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::http::{exchange, refused, server_error, unreadable};
use super::settlement::{self, Period, ReportError, ReportLine};
use super::{
    BoxFuture, Call, CallbackIdentity, CallbackNotice, CallbackParseError, CallbackResult, Gateway,
    Outcome, PaymentMethod, PaymentOrder, RefundOrder,
};

pub struct SoapGateway;

/// The SOAP 1.1 envelope namespace.
pub const ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The namespace of the payment operations.
pub const PAYMENTS_NS: &str = "urn:paygate:sim:payments";

const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

const ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments"><soap:Body><pay:PaymentNotificationResponse><pay:Received>true</pay:Received></pay:PaymentNotificationResponse></soap:Body></soap:Envelope>"#;

// ---- what we send ----

#[derive(Serialize)]
#[serde(rename = "soap:Envelope")]
struct OutEnvelope<B> {
    #[serde(rename = "@xmlns:soap")]
    soap: &'static str,
    #[serde(rename = "@xmlns:pay")]
    pay: &'static str,
    #[serde(rename = "soap:Body")]
    body: B,
}

/// The content of `soap:Body`: an enum's variant is written as its element name.
#[derive(Serialize)]
struct OutBody<'a> {
    #[serde(rename = "$value")]
    operation: &'a Operation<'a>,
}

#[derive(Serialize)]
enum Operation<'a> {
    #[serde(rename = "pay:SubmitPayment")]
    Submit(SubmitPayment<'a>),
    #[serde(rename = "pay:QueryPayment")]
    Query(QueryPayment<'a>),
    #[serde(rename = "pay:RefundPayment")]
    Refund(RefundPayment<'a>),
    #[serde(rename = "pay:QueryRefund")]
    QueryRefund(QueryPayment<'a>),
}

#[derive(Serialize)]
struct RefundPayment<'a> {
    /// The refund's reference: the gateway's idempotency key for it.
    #[serde(rename = "pay:Reference")]
    reference: &'a str,
    /// The reference the payment was charged under.
    #[serde(rename = "pay:PaymentReference")]
    payment_reference: &'a str,
    #[serde(rename = "pay:Amount")]
    amount: String,
    #[serde(rename = "pay:Currency")]
    currency: &'a str,
}

#[derive(Serialize)]
struct SubmitPayment<'a> {
    #[serde(rename = "pay:Reference")]
    reference: &'a str,
    #[serde(rename = "pay:Amount")]
    amount: String,
    #[serde(rename = "pay:Currency")]
    currency: &'a str,
    #[serde(rename = "pay:Kind")]
    kind: &'a str,
    #[serde(rename = "pay:CallbackUrl")]
    callback_url: &'a str,
}

#[derive(Serialize)]
struct QueryPayment<'a> {
    #[serde(rename = "pay:Reference")]
    reference: &'a str,
}

impl Operation<'_> {
    fn action(&self) -> &'static str {
        match self {
            Operation::Submit(_) => "\"urn:paygate:sim:payments#SubmitPayment\"",
            Operation::Query(_) => "\"urn:paygate:sim:payments#QueryPayment\"",
            Operation::Refund(_) => "\"urn:paygate:sim:payments#RefundPayment\"",
            Operation::QueryRefund(_) => "\"urn:paygate:sim:payments#QueryRefund\"",
        }
    }
}

fn envelope(operation: &Operation<'_>) -> Result<String, quick_xml::SeError> {
    let body = quick_xml::se::to_string(&OutEnvelope {
        soap: ENVELOPE_NS,
        pay: PAYMENTS_NS,
        body: OutBody { operation },
    })?;
    Ok(format!(r#"<?xml version="1.0" encoding="UTF-8"?>{body}"#))
}

// ---- what we read ----

#[derive(Debug, Deserialize)]
struct InEnvelope<B> {
    #[serde(rename = "Body")]
    body: B,
}

#[derive(Debug, Deserialize)]
struct AnswerBody {
    #[serde(rename = "$value")]
    content: Answer,
}

#[derive(Debug, Deserialize)]
enum Answer {
    SubmitPaymentResponse(PaymentAnswer),
    QueryPaymentResponse(PaymentAnswer),
    RefundPaymentResponse(PaymentAnswer),
    QueryRefundResponse(PaymentAnswer),
    Fault(Fault),
}

#[derive(Debug, Deserialize)]
struct PaymentAnswer {
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "GatewayTxnId")]
    gateway_txn_id: Option<String>,
    #[serde(rename = "Reason")]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Fault {
    faultcode: String,
    faultstring: Option<String>,
    detail: Option<FaultDetail>,
}

#[derive(Debug, Deserialize)]
struct FaultDetail {
    #[serde(rename = "Error")]
    error: Option<FaultError>,
}

#[derive(Debug, Deserialize)]
struct FaultError {
    #[serde(rename = "Code")]
    code: String,
}

#[derive(Debug, Deserialize)]
struct NotificationBody {
    #[serde(rename = "PaymentNotification")]
    notification: Notification,
}

#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "EventId")]
    event_id: String,
    #[serde(rename = "Reference")]
    reference: String,
    #[serde(rename = "GatewayTxnId")]
    gateway_txn_id: Option<String>,
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "Amount")]
    amount: Option<String>,
    #[serde(rename = "Currency")]
    currency: Option<String>,
    #[serde(rename = "Reason")]
    reason: Option<String>,
}

/// Reads a SOAP document into `T`, after checking that its root is a SOAP 1.1
/// `Envelope` and that it declares no DOCTYPE.
fn read_envelope<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut reader = NsReader::from_str(text);
    let mut root_checked = false;
    loop {
        match reader.read_resolved_event() {
            Ok((_, Event::DocType(_))) => return Err("a DOCTYPE is not allowed".to_owned()),
            Ok((namespace, Event::Start(start))) if !root_checked => {
                let is_envelope = start.local_name().as_ref() == b"Envelope"
                    && namespace == ResolveResult::Bound(Namespace(ENVELOPE_NS.as_bytes()));
                if !is_envelope {
                    return Err("the root is not a SOAP 1.1 Envelope".to_owned());
                }
                root_checked = true;
            }
            Ok((_, Event::Eof)) => break,
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
    if !root_checked {
        return Err("no SOAP Envelope".to_owned());
    }
    quick_xml::de::from_str::<InEnvelope<T>>(text)
        .map(|envelope| envelope.body)
        .map_err(|e| e.to_string())
}

impl Gateway for SoapGateway {
    fn protocol(&self) -> &'static str {
        "soap"
    }

    fn takes(&self, method: PaymentMethod) -> bool {
        method == PaymentMethod::Plain
    }

    fn submit<'a>(&'a self, call: Call<'a>, order: &'a PaymentOrder) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let operation = Operation::Submit(SubmitPayment {
                reference: &order.reference,
                amount: order.amount.to_string(),
                currency: &order.currency,
                kind: order.kind.as_str(),
                callback_url: &order.callback_url,
            });
            self.call(call, &operation).await
        })
    }

    fn query<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.call(call, &Operation::Query(QueryPayment { reference }))
                .await
        })
    }

    fn refund<'a>(&'a self, call: Call<'a>, order: &'a RefundOrder) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let operation = Operation::Refund(RefundPayment {
                reference: &order.reference,
                payment_reference: &order.payment_reference,
                amount: order.amount.to_string(),
                currency: &order.currency,
            });
            self.call(call, &operation).await
        })
    }

    fn query_refund<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.call(call, &Operation::QueryRefund(QueryPayment { reference }))
                .await
        })
    }

    /// `SettlementReport {From, To}` posted to `<base>/reports`: a SOAP report.
    fn settlement_report<'a>(
        &'a self,
        call: Call<'a>,
        period: Period,
        lines: &'a tokio::sync::mpsc::Sender<ReportLine>,
    ) -> BoxFuture<'a, Result<u64, ReportError>> {
        Box::pin(async move {
            let stamp = |at: chrono::DateTime<chrono::Utc>| {
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            };
            let body = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{ENVELOPE_NS}" xmlns:pay="{PAYMENTS_NS}"><soap:Body><pay:SettlementReport><pay:From>{}</pay:From><pay:To>{}</pay:To></pay:SettlementReport></soap:Body></soap:Envelope>"#,
                stamp(period.start),
                stamp(period.end)
            );
            let request = call
                .http
                .post(settlement::url(call, "reports"))
                .header("Content-Type", CONTENT_TYPE)
                .header(
                    "SOAPAction",
                    "\"urn:paygate:sim:payments#SettlementReport\"",
                )
                .body(body);
            let response = settlement::open(request, call.gateway).await?;
            settlement::read_soap(response, &call.gateway.code, lines).await
        })
    }

    fn callback_identity(&self, body: &[u8]) -> Result<CallbackIdentity, CallbackParseError> {
        let body: NotificationBody = read_envelope(body).map_err(malformed)?;
        Ok(CallbackIdentity {
            event_id: body.notification.event_id,
            reference: body.notification.reference,
        })
    }

    fn parse_callback(&self, body: &[u8]) -> Result<CallbackNotice, CallbackParseError> {
        let n = read_envelope::<NotificationBody>(body)
            .map_err(malformed)?
            .notification;
        let result = match n.status.as_deref() {
            Some("approved") => CallbackResult::Approved,
            Some("declined") => CallbackResult::Declined {
                reason: n.reason.unwrap_or_else(|| "declined".to_owned()),
            },
            other => return Err(malformed(format!("unknown status {other:?}"))),
        };
        Ok(CallbackNotice {
            event_id: n.event_id,
            reference: n.reference,
            gateway_txn_id: n.gateway_txn_id,
            result,
            amount: n
                .amount
                .ok_or_else(|| malformed("no Amount"))?
                .trim()
                .parse::<Decimal>()
                .map_err(malformed)?,
            currency: n.currency.ok_or_else(|| malformed("no Currency"))?,
        })
    }

    fn callback_ack(&self) -> (&'static str, &'static str) {
        (CONTENT_TYPE, ACK)
    }
}

impl SoapGateway {
    async fn call(&self, call: Call<'_>, operation: &Operation<'_>) -> Outcome {
        let code = &call.gateway.code;
        let body = match envelope(operation) {
            Ok(body) => body,
            Err(error) => {
                // Nothing was sent.
                return Outcome::Unavailable {
                    reason: format!("cannot write the request for {code}: {error}"),
                };
            }
        };
        let request = call
            .http
            .post(call.gateway.base_url.as_str())
            .header("Content-Type", CONTENT_TYPE)
            .header("SOAPAction", operation.action())
            .body(body);
        match exchange(request, call.gateway).await {
            Err(outcome) => outcome,
            // A SOAP server answers its faults with 500; other statuses are not its own.
            Ok((status, body))
                if status.is_success() || status == StatusCode::INTERNAL_SERVER_ERROR =>
            {
                match read_envelope::<AnswerBody>(&body) {
                    Ok(answer) => classify(code, answer.content),
                    Err(error) => unreadable(code, status, error),
                }
            }
            Ok((status, _)) if status.is_server_error() => server_error(code, status),
            Ok((status, _)) => refused(code, status),
        }
    }
}

/// What a SOAP answer means for the payment.
fn classify(code: &str, answer: Answer) -> Outcome {
    match answer {
        Answer::SubmitPaymentResponse(a)
        | Answer::QueryPaymentResponse(a)
        | Answer::RefundPaymentResponse(a)
        | Answer::QueryRefundResponse(a) => match (a.status.as_str(), a.gateway_txn_id) {
            ("accepted" | "approved" | "pending", Some(gateway_txn_id)) => {
                Outcome::Accepted { gateway_txn_id }
            }
            ("completed", Some(gateway_txn_id)) => Outcome::Completed { gateway_txn_id },
            ("declined" | "failed", _) => Outcome::Declined {
                reason: a.reason.unwrap_or_else(|| "declined".to_owned()),
            },
            ("unknown", _) => Outcome::Unknown,
            (other, _) => Outcome::Ambiguous {
                reason: format!("{code} answered an unknown status {other:?}"),
            },
        },
        Answer::Fault(fault) => {
            let faultcode = fault.faultcode.rsplit(':').next().unwrap_or_default();
            let detail = fault
                .detail
                .and_then(|d| d.error)
                .map(|e| e.code)
                .unwrap_or_default();
            let text = fault.faultstring.unwrap_or_default();
            // A Client fault refuses our request; a Server fault that says the service
            // is unavailable took nothing. Any other Server fault may have come late.
            if faultcode == "Client" || detail == "UNAVAILABLE" {
                Outcome::Unavailable {
                    reason: format!("{code} fault {faultcode}/{detail}: {text}"),
                }
            } else {
                Outcome::Ambiguous {
                    reason: format!("{code} fault {faultcode}/{detail}: {text}"),
                }
            }
        }
    }
}

fn malformed(error: impl std::fmt::Display) -> CallbackParseError {
    CallbackParseError::Malformed("soap", error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submit_envelope_is_namespaced_xml_with_its_values_escaped() {
        let xml = envelope(&Operation::Submit(SubmitPayment {
            reference: "txn_1",
            amount: "10.00".to_owned(),
            currency: "EUR",
            kind: "deposit",
            callback_url: "http://h/cb?a=1&b=<2>",
        }))
        .unwrap();
        let mut reader = NsReader::from_str(&xml);
        let mut names = Vec::new();
        loop {
            match reader.read_resolved_event().unwrap() {
                (ResolveResult::Bound(ns), Event::Start(e)) => names.push((
                    String::from_utf8(ns.as_ref().to_vec()).unwrap(),
                    String::from_utf8(e.local_name().as_ref().to_vec()).unwrap(),
                )),
                (_, Event::Eof) => break,
                _ => {}
            }
        }
        assert_eq!(names[0], (ENVELOPE_NS.to_owned(), "Envelope".to_owned()));
        assert_eq!(names[1], (ENVELOPE_NS.to_owned(), "Body".to_owned()));
        assert_eq!(
            names[2],
            (PAYMENTS_NS.to_owned(), "SubmitPayment".to_owned())
        );
        assert!(xml.contains("&amp;b=&lt;2&gt;"), "{xml}");
    }

    fn answer(inner: &str) -> Outcome {
        let xml = format!(
            r#"<?xml version="1.0"?><s:Envelope xmlns:s="{ENVELOPE_NS}" xmlns:p="{PAYMENTS_NS}"><s:Body>{inner}</s:Body></s:Envelope>"#
        );
        classify(
            "g",
            read_envelope::<AnswerBody>(xml.as_bytes()).unwrap().content,
        )
    }

    #[test]
    fn answers_and_faults_map_to_outcome_classes_whatever_the_prefixes() {
        assert_eq!(
            answer("<p:SubmitPaymentResponse><p:Status>accepted</p:Status><p:GatewayTxnId>x</p:GatewayTxnId></p:SubmitPaymentResponse>"),
            Outcome::Accepted { gateway_txn_id: "x".into() }
        );
        assert_eq!(
            answer("<p:SubmitPaymentResponse><p:Status>declined</p:Status><p:Reason>insufficient_funds</p:Reason></p:SubmitPaymentResponse>"),
            Outcome::Declined { reason: "insufficient_funds".into() }
        );
        assert_eq!(
            answer("<p:QueryPaymentResponse><p:Status>unknown</p:Status></p:QueryPaymentResponse>"),
            Outcome::Unknown
        );
        assert!(matches!(
            answer("<s:Fault><faultcode>s:Server</faultcode><faultstring>down</faultstring><detail><p:Error><p:Code>UNAVAILABLE</p:Code></p:Error></detail></s:Fault>"),
            Outcome::Unavailable { .. }
        ));
        assert!(matches!(
            answer(
                "<s:Fault><faultcode>s:Server</faultcode><faultstring>oops</faultstring></s:Fault>"
            ),
            Outcome::Ambiguous { .. }
        ));
        assert!(matches!(
            answer(
                "<s:Fault><faultcode>s:Client</faultcode><faultstring>bad</faultstring></s:Fault>"
            ),
            Outcome::Unavailable { .. }
        ));
    }

    #[test]
    fn a_document_that_is_not_a_soap_envelope_or_declares_a_doctype_is_refused() {
        let wrong_ns = br#"<Envelope xmlns="urn:other"><Body/></Envelope>"#;
        assert!(read_envelope::<AnswerBody>(wrong_ns).is_err());
        let doctype = format!(
            r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><s:Envelope xmlns:s="{ENVELOPE_NS}"><s:Body/></s:Envelope>"#
        );
        assert_eq!(
            read_envelope::<AnswerBody>(doctype.as_bytes()).unwrap_err(),
            "a DOCTYPE is not allowed"
        );
        assert!(read_envelope::<AnswerBody>(b"not xml <<<").is_err());
    }

    #[test]
    fn a_soap_callback_is_normalised_and_its_acknowledgement_is_a_soap_envelope() {
        let body = format!(
            r#"<soap:Envelope xmlns:soap="{ENVELOPE_NS}" xmlns:pay="{PAYMENTS_NS}"><soap:Body><pay:PaymentNotification><pay:EventId>e1</pay:EventId><pay:Reference>txn_1</pay:Reference><pay:GatewayTxnId>g1</pay:GatewayTxnId><pay:Status>approved</pay:Status><pay:Amount>10.00</pay:Amount><pay:Currency>EUR</pay:Currency></pay:PaymentNotification></soap:Body></soap:Envelope>"#
        );
        let notice = SoapGateway.parse_callback(body.as_bytes()).unwrap();
        assert_eq!(notice.result, CallbackResult::Approved);
        assert_eq!(notice.reference, "txn_1");
        assert_eq!(
            SoapGateway
                .callback_identity(body.as_bytes())
                .unwrap()
                .event_id,
            "e1"
        );
        let (_, ack) = SoapGateway.callback_ack();
        assert!(read_envelope::<serde::de::IgnoredAny>(ack.as_bytes()).is_ok());
    }
}
