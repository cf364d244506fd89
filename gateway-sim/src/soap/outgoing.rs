//! Writing SOAP envelopes with serde, so every value is escaped by the serializer and
//! never pasted into markup: answers, faults and callback notifications, with the
//! envelope under the `soap` prefix and the payload under `pay`.

use quick_xml::SeError;
use serde::Serialize;

use super::{PAYMENTS_NS, SOAP_ENVELOPE_NS};

const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

#[derive(Serialize)]
#[serde(rename = "soap:Envelope")]
struct Envelope<'a> {
    #[serde(rename = "@xmlns:soap")]
    soap: &'static str,
    #[serde(rename = "@xmlns:pay")]
    pay: &'static str,
    #[serde(rename = "soap:Body")]
    body: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "$value")]
    content: Content<'a>,
}

/// What a body can carry; each variant is named as its element.
#[derive(Debug, Serialize)]
pub(crate) enum Content<'a> {
    #[serde(rename = "pay:SubmitPaymentResponse")]
    SubmitPaymentResponse(PaymentStatus<'a>),
    #[serde(rename = "pay:QueryPaymentResponse")]
    QueryPaymentResponse(PaymentStatus<'a>),
    #[serde(rename = "pay:RefundPaymentResponse")]
    RefundPaymentResponse(PaymentStatus<'a>),
    #[serde(rename = "pay:QueryRefundResponse")]
    QueryRefundResponse(PaymentStatus<'a>),
    #[serde(rename = "pay:PaymentNotification")]
    PaymentNotification(Notification<'a>),
    #[serde(rename = "soap:Fault")]
    Fault(Fault<'a>),
}

/// The children of every `…Response`: `SubmitPayment`, `QueryPayment`, `RefundPayment`
/// and `QueryRefund`'s.
#[derive(Debug, Serialize)]
pub(crate) struct PaymentStatus<'a> {
    #[serde(rename = "pay:Status")]
    pub(crate) status: &'a str,
    #[serde(rename = "pay:GatewayTxnId", skip_serializing_if = "Option::is_none")]
    pub(crate) gateway_txn_id: Option<&'a str>,
    #[serde(rename = "pay:Reason", skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Notification<'a> {
    #[serde(rename = "pay:EventId")]
    pub(crate) event_id: &'a str,
    #[serde(rename = "pay:Reference")]
    pub(crate) reference: &'a str,
    #[serde(rename = "pay:GatewayTxnId", skip_serializing_if = "Option::is_none")]
    pub(crate) gateway_txn_id: Option<&'a str>,
    #[serde(rename = "pay:Status")]
    pub(crate) status: &'a str,
    #[serde(rename = "pay:Amount")]
    pub(crate) amount: &'a str,
    #[serde(rename = "pay:Currency")]
    pub(crate) currency: &'a str,
    #[serde(rename = "pay:Reason", skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'a str>,
}

/// Who is at fault, in SOAP 1.1 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultCode {
    /// The request was wrong; resending it unchanged will not help.
    Client,
    /// The gateway failed; the same request may succeed later.
    Server,
}

/// A SOAP 1.1 fault; its children are unqualified, as the specification has them.
#[derive(Debug, Serialize)]
pub(crate) struct Fault<'a> {
    faultcode: &'static str,
    faultstring: &'a str,
    detail: Detail<'a>,
}

#[derive(Debug, Serialize)]
struct Detail<'a> {
    #[serde(rename = "pay:Error")]
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "pay:Code")]
    code: &'a str,
}

impl<'a> Content<'a> {
    /// A fault with a machine-readable `code` in its detail.
    pub(crate) fn fault(faultcode: FaultCode, faultstring: &'a str, code: &'a str) -> Self {
        Content::Fault(Fault {
            faultcode: match faultcode {
                FaultCode::Client => "soap:Client",
                FaultCode::Server => "soap:Server",
            },
            faultstring,
            detail: Detail {
                error: ErrorDetail { code },
            },
        })
    }
}

/// The whole document: XML declaration and envelope around `content`.
pub(crate) fn to_xml(content: Content<'_>) -> Result<String, SeError> {
    let envelope = Envelope {
        soap: SOAP_ENVELOPE_NS,
        pay: PAYMENTS_NS,
        body: Body { content },
    };
    let mut xml = String::from(DECLARATION);
    quick_xml::se::to_writer(&mut xml, &envelope)?;
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_omits_what_it_does_not_have_and_escapes_what_it_has() {
        let xml = to_xml(Content::QueryPaymentResponse(PaymentStatus {
            status: "declined",
            gateway_txn_id: None,
            reason: Some("a<b&c"),
        }))
        .unwrap();
        assert_eq!(
            xml,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments">"#,
                "<soap:Body><pay:QueryPaymentResponse><pay:Status>declined</pay:Status>",
                "<pay:Reason>a&lt;b&amp;c</pay:Reason></pay:QueryPaymentResponse></soap:Body>",
                "</soap:Envelope>"
            )
        );
    }

    #[test]
    fn a_fault_has_unqualified_children_and_a_coded_detail() {
        let xml = to_xml(Content::fault(
            FaultCode::Server,
            "temporarily unavailable",
            "UNAVAILABLE",
        ))
        .unwrap();
        assert!(
            xml.ends_with(concat!(
                "<soap:Body><soap:Fault><faultcode>soap:Server</faultcode>",
                "<faultstring>temporarily unavailable</faultstring>",
                "<detail><pay:Error><pay:Code>UNAVAILABLE</pay:Code></pay:Error></detail>",
                "</soap:Fault></soap:Body></soap:Envelope>"
            )),
            "{xml}"
        );
    }
}
