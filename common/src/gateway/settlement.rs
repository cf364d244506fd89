//! Settlement reports: what a gateway says it charged and refunded in a period, line by
//! line, each in its own format — the JSON gateway a JSON list, the SOAP gateway a SOAP
//! report, the card acquirer a CSV file. An adapter's
//! [`super::Gateway::settlement_report`] fetches one and sends its lines, normalised to
//! [`ReportLine`], into a channel as they are read: the JSON list and the CSV file are
//! read chunk by chunk and never held whole (a SOAP report is, up to
//! [`MAX_SOAP_REPORT_BYTES`]: its XML is read with a pull parser over the whole body).
//!
//! A report that cannot be fetched or read is a [`ReportError`]; whoever reads the
//! channel must treat the lines it got so far as nothing (the payment-processor's
//! settlement runs stage a report whole before they match any of it).

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Call, GatewayRecord};

/// How long a report may take to arrive whole: far longer than a payment call.
pub const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A SOAP report is parsed whole, so its size is bounded.
pub const MAX_SOAP_REPORT_BYTES: usize = 256 * 1024 * 1024;

/// A line (or a JSON object) longer than this is no report line.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// A period, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    /// `start` and `end` as a query string: `from=…&to=…` (RFC 3339, UTC).
    pub fn query(&self) -> String {
        format!(
            "from={}&to={}",
            self.start.to_rfc3339_opts(SecondsFormat::Millis, true),
            self.end.to_rfc3339_opts(SecondsFormat::Millis, true)
        )
        .replace('+', "%2B")
    }
}

/// What moved money: a payment charged, or a refund paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Charge,
    Refund,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Charge => "charge",
            Operation::Refund => "refund",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "charge" | "payment" | "sale" => Some(Operation::Charge),
            "refund" => Some(Operation::Refund),
            _ => None,
        }
    }
}

/// Whether the money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineStatus {
    /// Charged (or refunded) and settled.
    Settled,
    /// Nothing moved: the gateway declined it.
    Declined,
}

impl LineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LineStatus::Settled => "settled",
            LineStatus::Declined => "declined",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "settled" | "charged" | "refunded" | "completed" => Some(LineStatus::Settled),
            "declined" | "failed" => Some(LineStatus::Declined),
            _ => None,
        }
    }
}

/// One line of a report, whatever its format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    /// Our reference: a transaction id for a charge, a refund id for a refund.
    pub reference: String,
    pub operation: Operation,
    /// A refund's payment, by the reference it was charged under.
    pub payment_reference: Option<String>,
    pub amount: Decimal,
    pub currency: String,
    pub fee: Decimal,
    pub status: LineStatus,
    pub settled_at: DateTime<Utc>,
}

/// Why a report could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not fetched (unreachable, a timeout, a 5xx): worth trying again.
    #[error("the report could not be fetched: {0}")]
    Unavailable(String),
    /// Fetched, but not a report this adapter can read.
    #[error("the report cannot be read: {0}")]
    Unreadable(String),
    /// Whoever reads the lines stopped reading.
    #[error("the reader of the report went away")]
    Abandoned,
}

/// The fields of a line as a gateway spells them, before they are checked.
#[derive(Debug, Deserialize)]
pub(super) struct RawLine {
    #[serde(alias = "Reference")]
    reference: String,
    #[serde(alias = "Operation")]
    operation: String,
    #[serde(default, alias = "PaymentReference")]
    payment_reference: Option<String>,
    #[serde(alias = "Amount")]
    amount: String,
    #[serde(alias = "Currency")]
    currency: String,
    #[serde(default, alias = "Fee")]
    fee: Option<String>,
    #[serde(alias = "Status")]
    status: String,
    #[serde(alias = "SettledAt")]
    settled_at: String,
}

impl RawLine {
    pub(super) fn check(self, at: usize) -> Result<ReportLine, ReportError> {
        let bad = |what: &str, value: &str| {
            ReportError::Unreadable(format!("line {at}: {what} {value:?} is not valid"))
        };
        let decimal = |what: &str, value: &str| {
            value
                .trim()
                .parse::<Decimal>()
                .map_err(|_| bad(what, value))
        };
        if self.reference.trim().is_empty() {
            return Err(bad("reference", &self.reference));
        }
        let currency = self.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(bad("currency", &self.currency));
        }
        Ok(ReportLine {
            operation: Operation::parse(self.operation.trim())
                .ok_or_else(|| bad("operation", &self.operation))?,
            payment_reference: self
                .payment_reference
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty()),
            amount: decimal("amount", &self.amount)?,
            fee: match self.fee.as_deref().map(str::trim) {
                None | Some("") => Decimal::ZERO,
                Some(fee) => decimal("fee", fee)?,
            },
            currency,
            status: LineStatus::parse(self.status.trim())
                .ok_or_else(|| bad("status", &self.status))?,
            settled_at: DateTime::parse_from_rfc3339(self.settled_at.trim())
                .map_err(|_| bad("settled_at", &self.settled_at))?
                .with_timezone(&Utc),
            reference: self.reference.trim().to_owned(),
        })
    }
}

/// Sends a report request and returns the response once its status says a report
/// follows.
pub(super) async fn open(
    request: reqwest::RequestBuilder,
    gateway: &GatewayRecord,
) -> Result<reqwest::Response, ReportError> {
    let code = &gateway.code;
    let response = request
        .timeout(REPORT_TIMEOUT)
        .send()
        .await
        .map_err(|e| ReportError::Unavailable(format!("{code}: {e}")))?;
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(ReportError::Unavailable(format!(
            "{code} answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(ReportError::Unreadable(format!("{code} answered {status}")));
    }
    Ok(response)
}

async fn chunk(
    response: &mut reqwest::Response,
    code: &str,
) -> Result<Option<bytes::Bytes>, ReportError> {
    response
        .chunk()
        .await
        .map_err(|e| ReportError::Unavailable(format!("{code}: the report broke off: {e}")))
}

async fn send(lines: &mpsc::Sender<ReportLine>, line: ReportLine) -> Result<(), ReportError> {
    lines.send(line).await.map_err(|_| ReportError::Abandoned)
}

/// Reads a CSV report line by line as it arrives: a header naming the columns, then one
/// line per operation. Fields are plain (no quoting: no field of a report needs it).
pub(super) async fn read_csv(
    mut response: reqwest::Response,
    code: &str,
    lines: &mpsc::Sender<ReportLine>,
) -> Result<u64, ReportError> {
    let mut pending: Vec<u8> = Vec::new();
    let mut header: Option<Vec<String>> = None;
    let mut count = 0u64;
    let mut number = 0usize;
    let mut ended = false;
    while !ended {
        match chunk(&mut response, code).await? {
            Some(bytes) => pending.extend_from_slice(&bytes),
            None => {
                ended = true;
                if !pending.is_empty() && pending.last() != Some(&b'\n') {
                    pending.push(b'\n');
                }
            }
        }
        let mut start = 0;
        while let Some(at) = pending[start..].iter().position(|b| *b == b'\n') {
            let raw = &pending[start..start + at];
            start += at + 1;
            number += 1;
            let text = std::str::from_utf8(raw)
                .map_err(|_| ReportError::Unreadable(format!("line {number} is not UTF-8")))?
                .trim_end_matches('\r');
            if text.trim().is_empty() {
                continue;
            }
            if text.contains('"') {
                return Err(ReportError::Unreadable(format!("line {number} is quoted")));
            }
            let fields: Vec<&str> = text.split(',').collect();
            let Some(names) = &header else {
                header = Some(fields.iter().map(|f| f.trim().to_owned()).collect());
                continue;
            };
            if fields.len() != names.len() {
                return Err(ReportError::Unreadable(format!(
                    "line {number} has {} fields, the header {}",
                    fields.len(),
                    names.len()
                )));
            }
            let object: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(&fields)
                .map(|(name, value)| (name.clone(), serde_json::Value::String((*value).to_owned())))
                .collect();
            let raw: RawLine = serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| ReportError::Unreadable(format!("line {number}: {e}")))?;
            send(lines, raw.check(number)?).await?;
            count += 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            return Err(ReportError::Unreadable(format!(
                "line {} is longer than {MAX_LINE_BYTES} bytes",
                number + 1
            )));
        }
    }
    if header.is_none() {
        return Err(ReportError::Unreadable("no header line".to_owned()));
    }
    Ok(count)
}

/// Reads a JSON list of lines as it arrives, one object at a time: the bytes of each
/// top-level object in the array are found by their brackets (outside strings) and
/// parsed alone, so the list is never held whole.
pub(super) async fn read_json_list(
    mut response: reqwest::Response,
    code: &str,
    lines: &mpsc::Sender<ReportLine>,
) -> Result<u64, ReportError> {
    let mut splitter = ArraySplitter::default();
    let mut count = 0u64;
    while let Some(bytes) = chunk(&mut response, code).await? {
        for object in splitter.feed(&bytes)? {
            let raw: RawLine = serde_json::from_slice(&object)
                .map_err(|e| ReportError::Unreadable(format!("item {}: {e}", count + 1)))?;
            send(
                lines,
                raw.check(usize::try_from(count + 1).unwrap_or(usize::MAX))?,
            )
            .await?;
            count += 1;
        }
    }
    splitter.finish()?;
    Ok(count)
}

/// Splits a JSON array of objects into the bytes of each object, fed in chunks.
#[derive(Default)]
struct ArraySplitter {
    /// Seen the opening `[`.
    opened: bool,
    /// Seen the closing `]`.
    closed: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
    current: Vec<u8>,
}

impl ArraySplitter {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, ReportError> {
        let unreadable =
            |what: &str| Err(ReportError::Unreadable(format!("not a JSON list: {what}")));
        let mut objects = Vec::new();
        for &b in bytes {
            if self.depth > 0 {
                self.current.push(b);
                if self.in_string {
                    if self.escaped {
                        self.escaped = false;
                    } else if b == b'\\' {
                        self.escaped = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            objects.push(std::mem::take(&mut self.current));
                        }
                    }
                    _ => {}
                }
                if self.current.len() > MAX_LINE_BYTES {
                    return unreadable("an item is too long");
                }
                continue;
            }
            match b {
                b' ' | b'\n' | b'\r' | b'\t' => {}
                b'[' if !self.opened => self.opened = true,
                b',' if self.opened && !self.closed => {}
                b']' if self.opened && !self.closed => self.closed = true,
                b'{' if self.opened && !self.closed => {
                    self.depth = 1;
                    self.current.push(b);
                }
                _ => return unreadable("unexpected byte outside an item"),
            }
        }
        Ok(objects)
    }

    fn finish(&self) -> Result<(), ReportError> {
        if self.opened && self.closed && self.depth == 0 {
            Ok(())
        } else {
            Err(ReportError::Unreadable(
                "the JSON list breaks off before its end".to_owned(),
            ))
        }
    }
}

/// Reads a SOAP report: `<SettlementReportResponse>` in the body, one `<Item>` per line
/// with `Reference`, `Operation`, `PaymentReference`, `Amount`, `Currency`, `Fee`,
/// `Status` and `SettledAt` children. A SOAP fault is an unreadable report.
pub(super) async fn read_soap(
    mut response: reqwest::Response,
    code: &str,
    lines: &mpsc::Sender<ReportLine>,
) -> Result<u64, ReportError> {
    let mut body = Vec::new();
    while let Some(bytes) = chunk(&mut response, code).await? {
        if body.len() + bytes.len() > MAX_SOAP_REPORT_BYTES {
            return Err(ReportError::Unreadable(format!(
                "a SOAP report over {MAX_SOAP_REPORT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&bytes);
    }
    let items = soap_items(&body)?;
    let mut count = 0u64;
    for (at, fields) in items.into_iter().enumerate() {
        let object: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let raw: RawLine = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| ReportError::Unreadable(format!("item {}: {e}", at + 1)))?;
        send(lines, raw.check(at + 1)?).await?;
        count += 1;
    }
    Ok(count)
}

/// The `<Item>`s of a SOAP report, each as (local name, text) pairs.
fn soap_items(body: &[u8]) -> Result<Vec<Vec<(String, String)>>, ReportError> {
    use quick_xml::events::Event;
    let unreadable = |e: &dyn std::fmt::Display| ReportError::Unreadable(format!("SOAP: {e}"));
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut items = Vec::new();
    let mut current: Option<Vec<(String, String)>> = None;
    let mut field: Option<String> = None;
    let mut saw_report = false;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| unreadable(&e))?;
        match event {
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                match name.as_str() {
                    "Fault" => return Err(ReportError::Unreadable("a SOAP fault".to_owned())),
                    "SettlementReportResponse" => saw_report = true,
                    "Item" if saw_report => current = Some(Vec::new()),
                    _ if current.is_some() => field = Some(name),
                    _ => {}
                }
            }
            Event::Text(text) => {
                if let (Some(item), Some(name)) = (current.as_mut(), field.as_ref()) {
                    let value = text.decode().map_err(|e| unreadable(&e))?;
                    let value = quick_xml::escape::unescape(&value).map_err(|e| unreadable(&e))?;
                    item.push((name.clone(), value.into_owned()));
                }
            }
            Event::End(end) => {
                let name = String::from_utf8_lossy(end.local_name().as_ref()).into_owned();
                if name == "Item" {
                    items.extend(current.take());
                } else {
                    field = None;
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_report {
        return Err(ReportError::Unreadable(
            "no SettlementReportResponse in the body".to_owned(),
        ));
    }
    Ok(items)
}

/// The base URL of a gateway call, for the adapters' report paths.
pub(super) fn url(call: Call<'_>, path: &str) -> String {
    format!("{}/{path}", super::http::base(call))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_list_fed_in_pieces_splits_into_its_objects_with_brackets_inside_strings() {
        let list = br#" [ {"a":"x}","b":{"c":1}}, {"a":"\"]"} ] "#;
        let mut splitter = ArraySplitter::default();
        let mut objects = Vec::new();
        for piece in list.chunks(3) {
            objects.extend(splitter.feed(piece).unwrap());
        }
        splitter.finish().unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0], br#"{"a":"x}","b":{"c":1}}"#.to_vec());
        assert_eq!(objects[1], br#"{"a":"\"]"}"#.to_vec());
    }

    #[test]
    fn a_json_list_that_breaks_off_is_unreadable() {
        let mut splitter = ArraySplitter::default();
        splitter.feed(br#"[{"a":1},{"a""#).unwrap();
        assert!(splitter.finish().is_err());
    }

    #[test]
    fn a_soap_report_reads_as_its_items_and_a_fault_is_unreadable() {
        let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><r:SettlementReportResponse xmlns:r="urn:x"><r:Item><r:Reference>txn_1</r:Reference><r:Amount>1.00</r:Amount></r:Item></r:SettlementReportResponse></s:Body></s:Envelope>"#;
        let items = soap_items(body).unwrap();
        assert_eq!(
            items,
            vec![vec![
                ("Reference".to_owned(), "txn_1".to_owned()),
                ("Amount".to_owned(), "1.00".to_owned())
            ]]
        );
        let fault =
            br#"<Envelope><Body><Fault><faultstring>no</faultstring></Fault></Body></Envelope>"#;
        assert!(soap_items(fault).is_err());
    }

    #[test]
    fn a_line_with_an_unknown_operation_or_a_bad_amount_is_unreadable() {
        let raw = |operation: &str, amount: &str| RawLine {
            reference: "txn_1".into(),
            operation: operation.into(),
            payment_reference: None,
            amount: amount.into(),
            currency: "usd".into(),
            fee: None,
            status: "settled".into(),
            settled_at: "2026-12-05T10:00:00Z".into(),
        };
        let line = raw("charge", "10.50").check(1).unwrap();
        assert_eq!(line.currency, "USD");
        assert_eq!(line.fee, Decimal::ZERO);
        assert!(raw("chargeback", "1").check(1).is_err());
        assert!(raw("charge", "ten").check(1).is_err());
    }
}
