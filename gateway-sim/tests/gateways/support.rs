//! A simulator on port 0 per test, a callback receiver that records what arrives, and a
//! namespace-aware reading of SOAP documents.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use paygate_gateway_sim::{SimConfig, Simulator};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const JSON_SECRET: &str = "json-secret";
pub const SOAP_SECRET: &str = "soap-secret";
pub const CARD_SECRET: &str = "card-secret";
pub const CALLBACK_DELAY: Duration = Duration::from_millis(50);
pub const SLOW_ANSWER: Duration = Duration::from_secs(2);

/// A running simulator, shut down when dropped.
pub struct Sim {
    pub url: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Sim {
    pub async fn start() -> Self {
        let simulator = Simulator::build(SimConfig {
            listen: "127.0.0.1:0".to_owned(),
            json_secret: JSON_SECRET.to_owned(),
            soap_secret: SOAP_SECRET.to_owned(),
            card_secret: CARD_SECRET.to_owned(),
            callback_delay: CALLBACK_DELAY,
            slow_answer: SLOW_ANSWER,
            answer_delay: Duration::ZERO,
        })
        .await
        .unwrap();
        let url = format!("http://127.0.0.1:{}", simulator.port());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(simulator.run(shutdown.clone()));
        Sim {
            url,
            http: reqwest::Client::new(),
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET {path}`, whatever it answers.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// The JSON body of `GET {path}`, whatever the status.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    /// `GET /charges/{reference}`.
    pub async fn charges(&self, reference: &str) -> Value {
        let response = self.get(&format!("/charges/{reference}")).await;
        assert!(response.status().is_success());
        response.json().await.unwrap()
    }

    /// `POST /control/release/{reference}`.
    pub async fn release(&self, reference: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/control/release/{reference}")))
            .send()
            .await
            .unwrap()
    }

    /// Posts a SOAP envelope; returns the HTTP status and the body.
    pub async fn soap(&self, envelope: String) -> (u16, String) {
        let response = self
            .http
            .post(self.url("/soap"))
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"urn:paygate:sim:payments#SubmitPayment\"")
            .body(envelope)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The `Status` a `QueryPayment` for `reference` answers, if any.
    pub async fn soap_status(&self, reference: &str) -> Option<String> {
        let (_, body) = self.soap(soap_query(reference)).await;
        text(&elements(&body), "Status")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A reference no other test uses.
pub fn reference() -> String {
    format!("txn_{}", uuid::Uuid::new_v4().simple())
}

/// A callback as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn signature(&self) -> Option<&str> {
        self.headers
            .get("x-paygate-signature")
            .and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A callback endpoint on port 0 that records everything posted to it.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/callbacks", post(record))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/callbacks",
            listener.local_addr().unwrap().port()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) until `count` callbacks arrived, and returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} callbacks arrived, not {count}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(received): State<Arc<Mutex<Vec<Received>>>>,
    headers: HeaderMap,
    body: String,
) {
    received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
}

/// An element of an XML document, with its namespace resolved and its text unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub namespace: Option<String>,
    pub name: String,
    pub text: String,
}

/// Every element of `xml`, in document order; panics unless it is well-formed.
pub fn elements(xml: &str) -> Vec<Element> {
    let mut reader = NsReader::from_str(xml);
    let mut elements: Vec<Element> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    loop {
        let (namespace, event) = reader.read_resolved_event().unwrap();
        let namespace = match namespace {
            ResolveResult::Bound(ns) => Some(String::from_utf8(ns.0.to_vec()).unwrap()),
            _ => None,
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if matches!(event, Event::Start(_)) {
                    open.push(elements.len());
                }
                elements.push(Element {
                    namespace,
                    name: String::from_utf8(e.local_name().as_ref().to_vec()).unwrap(),
                    text: String::new(),
                });
            }
            Event::End(_) => {
                open.pop();
            }
            Event::Text(text) => {
                if let Some(&i) = open.last() {
                    elements[i].text.push_str(&text.decode().unwrap());
                }
            }
            Event::GeneralRef(entity) => {
                let name = entity.decode().unwrap();
                let resolved = quick_xml::escape::resolve_predefined_entity(&name).unwrap();
                if let Some(&i) = open.last() {
                    elements[i].text.push_str(resolved);
                }
            }
            Event::Eof => return elements,
            _ => {}
        }
    }
}

/// The one element named `name` (local name).
pub fn element<'a>(elements: &'a [Element], name: &str) -> &'a Element {
    let mut found = elements.iter().filter(|e| e.name == name);
    let element = found
        .next()
        .unwrap_or_else(|| panic!("no {name} in {elements:?}"));
    assert!(found.next().is_none(), "more than one {name}");
    element
}

/// The text of the one element named `name`, if any.
pub fn text(elements: &[Element], name: &str) -> Option<String> {
    elements
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.text.clone())
}

impl Sim {
    /// `POST /json/payments`.
    pub fn json_pay(
        &self,
        reference: &str,
        amount: &str,
        callback_url: &str,
    ) -> reqwest::RequestBuilder {
        self.deposit(
            "/json/payments",
            reference,
            amount,
            callback_url,
            ("country", json!("DE")),
        )
    }

    /// `POST /card/charges` with a valid card numbered `number`.
    pub fn card_charge(
        &self,
        reference: &str,
        amount: &str,
        number: &str,
        callback_url: &str,
    ) -> reqwest::RequestBuilder {
        let card = json!({
            "number": number,
            "expiry_month": 12,
            "expiry_year": 2030,
            "cvv": "123",
            "holder_name": "Ada Lovelace",
        });
        self.deposit(
            "/card/charges",
            reference,
            amount,
            callback_url,
            ("card", card),
        )
    }

    /// A EUR deposit posted to `path` as Paygate posts one to either JSON gateway: keyed
    /// by its reference, plus the one field only that gateway reads.
    fn deposit(
        &self,
        path: &str,
        reference: &str,
        amount: &str,
        callback_url: &str,
        (field, value): (&str, Value),
    ) -> reqwest::RequestBuilder {
        let mut body = json!({
            "reference": reference,
            "amount": amount,
            "currency": "EUR",
            "kind": "deposit",
            "callback_url": callback_url,
        });
        body[field] = value;
        self.http
            .post(self.url(path))
            .header("idempotency-key", reference)
            .json(&body)
    }
}

/// Sends `request`, asserts it was answered 200, and returns the JSON body.
pub async fn ok_json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A `SubmitPayment` envelope, as a SOAP client would write it.
pub fn soap_submit(reference: &str, amount: &str, callback_url: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments">
  <soap:Body>
    <pay:SubmitPayment>
      <pay:Reference>{reference}</pay:Reference>
      <pay:Amount>{amount}</pay:Amount>
      <pay:Currency>EUR</pay:Currency>
      <pay:Kind>deposit</pay:Kind>
      <pay:CallbackUrl>{callback_url}</pay:CallbackUrl>
    </pay:SubmitPayment>
  </soap:Body>
</soap:Envelope>"#
    )
}

/// A `QueryPayment` envelope.
pub fn soap_query(reference: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments">
  <soap:Body><pay:QueryPayment><pay:Reference>{reference}</pay:Reference></pay:QueryPayment></soap:Body>
</soap:Envelope>"#
    )
}
