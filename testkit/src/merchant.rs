//! A merchant's webhook endpoint over real HTTP (or HTTPS under a test CA).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// A webhook as the test merchant received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
    /// When it arrived (since the receiver started).
    pub at: Duration,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// How the endpoint answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(StatusCode),
    /// The status with a `Retry-After` header.
    RetryAfter(StatusCode, String),
    /// Holds the request this long, then answers 200 (past the sender's timeout, it
    /// never sees the answer).
    Hang(Duration),
}

impl From<StatusCode> for Reply {
    fn from(status: StatusCode) -> Self {
        Reply::Status(status)
    }
}

struct State {
    received: Vec<Received>,
    /// Answers still to give, the next last.
    script: Vec<Reply>,
    /// What it answers once the script runs out.
    otherwise: Reply,
    /// Answers for requests whose body contains a needle, before the script.
    rules: Vec<(String, Vec<Reply>)>,
}

/// A merchant's webhook endpoint over real HTTP: records every request and answers with
/// the next scripted reply (then `otherwise`, 200 unless set).
#[derive(Clone)]
pub struct WebhookReceiver {
    pub url: String,
    state: Arc<Mutex<State>>,
    started: Instant,
}

/// An HTTPS receiver and the PEM of the CA its certificate chains to.
pub struct TlsReceiver {
    pub receiver: WebhookReceiver,
    pub ca_pem: String,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// Answers the first requests with `script`, in order, then 200.
    pub async fn start_with(script: Vec<StatusCode>) -> Self {
        Self::scripted(script.into_iter().map(Reply::from).collect()).await
    }

    /// Answers the first requests with `script`, in order, then 200.
    pub async fn scripted(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks", listener.local_addr().unwrap());
        let receiver = Self::new(url, script);
        let app = receiver.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    /// An HTTPS receiver on 127.0.0.1 whose certificate is issued by a fresh test CA.
    pub async fn start_tls() -> TlsReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/webhooks", listener.local_addr().unwrap());
        let (acceptor, ca_pem) = crate::tls::acceptor_with_test_ca();
        let receiver = Self::new(url, Vec::new());
        let app = receiver.router();
        let listener = crate::tls::TlsListener::new(listener, acceptor);
        tokio::spawn(async move { axum::serve(listener, app).await });
        TlsReceiver { receiver, ca_pem }
    }

    fn new(url: String, script: Vec<Reply>) -> Self {
        WebhookReceiver {
            url,
            state: Arc::new(Mutex::new(State {
                received: Vec::new(),
                script: script.into_iter().rev().collect(),
                otherwise: Reply::Status(StatusCode::OK),
                rules: Vec::new(),
            })),
            started: Instant::now(),
        }
    }

    fn router(&self) -> axum::Router {
        let this = self.clone();
        axum::Router::new().route(
            "/webhooks",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let this = this.clone();
                async move { this.answer(headers, body).await }
            }),
        )
    }

    async fn answer(&self, headers: HeaderMap, body: String) -> Response {
        let reply = {
            let mut state = self.state.lock().unwrap();
            state.received.push(Received {
                headers,
                body,
                at: self.started.elapsed(),
            });
            let body = &state.received.last().unwrap().body;
            let ruled = state.rules.iter().position(|(needle, replies)| {
                body.contains(needle.as_str()) && !replies.is_empty()
            });
            match ruled {
                Some(rule) => state.rules[rule].1.pop().unwrap(),
                None => {
                    let otherwise = state.otherwise.clone();
                    state.script.pop().unwrap_or(otherwise)
                }
            }
        };
        match reply {
            Reply::Status(status) => status.into_response(),
            Reply::RetryAfter(status, after) => {
                let mut response = status.into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_str(&after).unwrap());
                response
            }
            Reply::Hang(duration) => {
                tokio::time::sleep(duration).await;
                StatusCode::OK.into_response()
            }
        }
    }

    /// Answers the next requests whose body contains `needle` with `replies`, in order
    /// (before the script), then as any other request.
    pub fn answer_matching(&self, needle: &str, replies: Vec<Reply>) {
        let replies = replies.into_iter().rev().collect();
        self.state
            .lock()
            .unwrap()
            .rules
            .push((needle.to_owned(), replies));
    }

    /// From now on, answers every request not scripted with `reply`.
    pub fn answer_otherwise(&self, reply: impl Into<Reply>) {
        self.state.lock().unwrap().otherwise = reply.into();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
}
