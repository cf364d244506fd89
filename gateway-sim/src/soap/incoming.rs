//! Reading a SOAP request. A namespace-aware pass first ([`NsReader`]) refuses DOCTYPE
//! (and so entity declarations) and anything whose root is not a SOAP 1.1 `Envelope`;
//! then serde reads the operation, matching elements by local name whatever their
//! prefix, as SOAP toolkits choose prefixes freely.

use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::SOAP_ENVELOPE_NS;

/// The operations the gateway offers, named by the body's element.
#[derive(Debug, Deserialize)]
pub(crate) enum Operation {
    SubmitPayment(SubmitPayment),
    QueryPayment(QueryPayment),
    RefundPayment(RefundPayment),
    QueryRefund(QueryPayment),
}

/// `RefundPayment`: the refund's reference and the payment's.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RefundPayment {
    pub(crate) reference: String,
    pub(crate) payment_reference: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
}

/// `SubmitPayment`; other children (`Kind`, …) change nothing here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SubmitPayment {
    pub(crate) reference: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    pub(crate) callback_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct QueryPayment {
    pub(crate) reference: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Body")]
    body: Body,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "$value")]
    operation: Operation,
}

/// Why a request was refused, told to the caller in the fault string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRequest {
    NotUtf8,
    Malformed,
    Doctype,
    NotAnEnvelope,
    /// Well-formed, but not an operation of this gateway with the fields it needs.
    UnknownOperation,
    MissingReference,
}

impl BadRequest {
    pub(crate) fn message(self) -> &'static str {
        match self {
            BadRequest::NotUtf8 => "the request is not UTF-8",
            BadRequest::Malformed => "the request is not well-formed XML",
            BadRequest::Doctype => "DOCTYPE and entity declarations are refused",
            BadRequest::NotAnEnvelope => "the root element is not a SOAP 1.1 Envelope",
            BadRequest::UnknownOperation => {
                "the body is not a complete SubmitPayment, QueryPayment, RefundPayment or QueryRefund"
            }
            BadRequest::MissingReference => "the Reference is empty",
        }
    }
}

pub(crate) fn parse(body: &[u8]) -> Result<Operation, BadRequest> {
    let xml = std::str::from_utf8(body).map_err(|_| BadRequest::NotUtf8)?;
    check_envelope(xml)?;
    let envelope: Envelope =
        quick_xml::de::from_str(xml).map_err(|_| BadRequest::UnknownOperation)?;
    let reference = match &envelope.body.operation {
        Operation::SubmitPayment(submit) => &submit.reference,
        Operation::QueryPayment(query) | Operation::QueryRefund(query) => &query.reference,
        Operation::RefundPayment(refund) => &refund.reference,
    };
    if reference.trim().is_empty() {
        return Err(BadRequest::MissingReference);
    }
    Ok(envelope.body.operation)
}

/// Reads the whole document once, namespace-aware: well-formed, no DOCTYPE anywhere,
/// and a root `Envelope` in the SOAP 1.1 envelope namespace.
fn check_envelope(xml: &str) -> Result<(), BadRequest> {
    let mut reader = NsReader::from_str(xml);
    let mut root_seen = false;
    loop {
        match reader.read_resolved_event() {
            Err(_) => return Err(BadRequest::Malformed),
            Ok((_, Event::DocType(_))) => return Err(BadRequest::Doctype),
            Ok((namespace, Event::Start(element) | Event::Empty(element))) if !root_seen => {
                let in_soap = matches!(
                    namespace,
                    ResolveResult::Bound(Namespace(ns)) if ns == SOAP_ENVELOPE_NS.as_bytes()
                );
                if !in_soap || element.local_name().as_ref() != b"Envelope" {
                    return Err(BadRequest::NotAnEnvelope);
                }
                root_seen = true;
            }
            Ok((_, Event::Eof)) if root_seen => return Ok(()),
            Ok((_, Event::Eof)) => return Err(BadRequest::NotAnEnvelope),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBMIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:paygate:sim:payments">
  <s:Header/>
  <s:Body>
    <p:SubmitPayment>
      <p:Reference>txn_1 &amp; co</p:Reference>
      <p:Amount>10.00</p:Amount>
      <p:Currency>EUR</p:Currency>
      <p:Kind>deposit</p:Kind>
      <p:CallbackUrl>http://127.0.0.1:1/cb</p:CallbackUrl>
    </p:SubmitPayment>
  </s:Body>
</s:Envelope>"#;

    /// Why `xml` is refused; panics if it is read.
    fn refused(xml: &str) -> BadRequest {
        parse(xml.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_submit_is_read_whatever_the_prefixes() {
        let Ok(Operation::SubmitPayment(submit)) = parse(SUBMIT.as_bytes()) else {
            panic!("not read as a submit");
        };
        assert_eq!(submit.reference, "txn_1 & co");
        assert_eq!(submit.amount, "10.00".parse::<Decimal>().unwrap());
        assert_eq!(submit.amount.to_string(), "10.00");
        assert_eq!(submit.currency, "EUR");
        assert_eq!(submit.callback_url, "http://127.0.0.1:1/cb");
    }

    #[test]
    fn an_envelope_outside_the_soap_namespace_is_refused() {
        let wrong = SUBMIT.replace(
            "http://schemas.xmlsoap.org/soap/envelope/",
            "http://www.w3.org/2003/05/soap-envelope",
        );
        assert_eq!(refused(&wrong), BadRequest::NotAnEnvelope);
        let unbound = "<Envelope><Body><QueryPayment><Reference>x</Reference></QueryPayment></Body></Envelope>";
        assert_eq!(refused(unbound), BadRequest::NotAnEnvelope);
    }

    #[test]
    fn a_doctype_with_entities_is_refused() {
        let hostile = SUBMIT.replace(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY lol \"lol\">]>",
        );
        assert_eq!(refused(&hostile), BadRequest::Doctype);
    }

    #[test]
    fn broken_or_incomplete_requests_are_refused() {
        let unclosed = SUBMIT.replace("</p:Currency>", "</p:Currenc>");
        assert_eq!(refused(&unclosed), BadRequest::Malformed);
        let no_amount = SUBMIT.replace("<p:Amount>10.00</p:Amount>", "");
        assert_eq!(refused(&no_amount), BadRequest::UnknownOperation);
        let unknown = SUBMIT.replace("SubmitPayment", "CancelPayment");
        assert_eq!(refused(&unknown), BadRequest::UnknownOperation);
        let empty = SUBMIT.replace("txn_1 &amp; co", " ");
        assert_eq!(refused(&empty), BadRequest::MissingReference);
    }
}
