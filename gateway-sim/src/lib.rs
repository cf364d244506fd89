//! A simulator of the external world Paygate talks to, over real HTTP: payment gateways
//! that answer, fail, time out and call back, and a merchant endpoint that collects
//! webhooks. For the demo, the end-to-end tests and the benchmark.
//!
//! The JSON REST gateway lives under `/json`. The amount's cents pick the outcome:
//! `.01` declines (insufficient funds), `.02` takes the payment but answers only after
//! the caller's timeout, `.03` answers 503 and charges nothing, `.04` sends its callback
//! twice, `.05` sends the callback before answering; anything else approves and sends a
//! signed callback after the configured delay. Requests are idempotent per reference: a
//! repeated one is answered as the first was and never charges again.
//! `GET /charges/{reference}` counts the charges, so tests can prove none was doubled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use paygate_common::health;
use paygate_common::signature::callback;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: String,
    /// The secret the JSON gateway signs its callbacks with.
    pub json_secret: String,
    /// How long after approving a payment its callback is sent.
    pub callback_delay: Duration,
    /// How long a `.02` payment keeps the caller waiting.
    pub slow_answer: Duration,
    /// How long every payment takes to answer after it was taken (charged): a slow
    /// gateway, which leaves a window where the caller can die before hearing back.
    pub answer_delay: Duration,
}

impl SimConfig {
    /// `PAYGATE_SIM_LISTEN`, `PAYGATE_SIM_JSON_SECRET`, `PAYGATE_SIM_CALLBACK_DELAY_MS`,
    /// `PAYGATE_SIM_ANSWER_DELAY_MS`.
    pub fn from_env() -> anyhow::Result<Self> {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Ok(SimConfig {
            listen: var("PAYGATE_SIM_LISTEN", "127.0.0.1:8090"),
            json_secret: var("PAYGATE_SIM_JSON_SECRET", "simjson-callback-secret"),
            callback_delay: Duration::from_millis(
                var("PAYGATE_SIM_CALLBACK_DELAY_MS", "200").parse()?,
            ),
            slow_answer: Duration::from_secs(30),
            answer_delay: Duration::from_millis(var("PAYGATE_SIM_ANSWER_DELAY_MS", "0").parse()?),
        })
    }
}

/// A payment as the simulated gateway remembers it.
#[derive(Debug, Clone, Serialize)]
struct Charge {
    reference: String,
    status: &'static str,
    gateway_txn_id: Option<String>,
    reason: Option<String>,
    charges: u32,
}

/// A webhook the simulated merchant received, as it arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedWebhook {
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Default)]
struct Memory {
    charges: HashMap<String, Charge>,
    webhooks: Vec<ReceivedWebhook>,
}

#[derive(Clone)]
struct Sim {
    config: Arc<SimConfig>,
    memory: Arc<Mutex<Memory>>,
    http: reqwest::Client,
}

impl Sim {
    fn remember<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut memory)
    }
}

/// The simulator, bound and ready to run.
pub struct Simulator {
    listener: TcpListener,
    sim: Sim,
}

impl Simulator {
    pub async fn build(config: SimConfig) -> anyhow::Result<Self> {
        let listener = health::bind(&config.listen).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Simulator {
            listener,
            sim: Sim {
                config: Arc::new(config),
                memory: Arc::default(),
                http,
            },
        })
    }

    pub fn port(&self) -> u16 {
        health::port(&self.listener)
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = Router::new()
            .route("/json/payments", post(json_pay))
            .route("/json/payments/{reference}", get(json_status))
            .route("/charges/{reference}", get(charges))
            .route(
                "/merchant/webhooks",
                post(receive_webhook).get(list_webhooks),
            )
            .route("/healthz", get(health::healthz))
            .with_state(self.sim);
        Ok(health::serve(self.listener, router, shutdown).await?)
    }
}

#[derive(Debug, Deserialize)]
struct PayRequest {
    reference: String,
    amount: Decimal,
    currency: String,
    callback_url: String,
}

/// The cents of an amount, which pick the simulated outcome.
fn cents(amount: Decimal) -> i64 {
    let cents = (amount.fract() * Decimal::ONE_HUNDRED).trunc();
    cents.to_string().parse().unwrap_or_default()
}

fn answer(charge: &Charge) -> Response {
    let body = json!({
        "status": charge.status,
        "gateway_txn_id": charge.gateway_txn_id,
        "reason": charge.reason,
    });
    let status = if charge.status == "declined" {
        StatusCode::PAYMENT_REQUIRED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn json_pay(State(sim): State<Sim>, Json(request): Json<PayRequest>) -> Response {
    let outcome = cents(request.amount);
    if outcome == 3 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "temporarily unavailable"})),
        )
            .into_response();
    }
    // Idempotent per reference: a repeat is answered as before and charges nothing.
    let (charge, first) = sim.remember(|m| match m.charges.get(&request.reference) {
        Some(existing) => (existing.clone(), false),
        None => {
            let charge = if outcome == 1 {
                Charge {
                    reference: request.reference.clone(),
                    status: "declined",
                    gateway_txn_id: None,
                    reason: Some("insufficient_funds".to_owned()),
                    charges: 0,
                }
            } else {
                Charge {
                    reference: request.reference.clone(),
                    status: "accepted",
                    gateway_txn_id: Some(format!("sim_{}", uuid::Uuid::new_v4().simple())),
                    reason: None,
                    charges: 1,
                }
            };
            m.charges.insert(request.reference.clone(), charge.clone());
            (charge, true)
        }
    });
    if first && charge.status == "accepted" {
        let sends = if outcome == 4 { 2 } else { 1 };
        let delay = if outcome == 5 {
            Duration::ZERO
        } else {
            sim.config.callback_delay
        };
        let event_id = format!("simevt_{}", uuid::Uuid::new_v4().simple());
        let body = json!({
            "event_id": event_id,
            "reference": request.reference,
            "gateway_txn_id": charge.gateway_txn_id,
            "status": "approved",
            "amount": request.amount.to_string(),
            "currency": request.currency,
            "reason": null,
        })
        .to_string();
        tokio::spawn(send_callback(
            sim.clone(),
            request.callback_url.clone(),
            body,
            delay,
            sends,
        ));
        if outcome == 5 {
            // Let the callback arrive first.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let delay = if outcome == 2 {
        sim.config.slow_answer
    } else {
        sim.config.answer_delay
    };
    tokio::time::sleep(delay).await;
    answer(&charge)
}

/// Posts a signed callback `sends` times, each retried on failure like real gateways do.
async fn send_callback(sim: Sim, url: String, body: String, delay: Duration, sends: u32) {
    tokio::time::sleep(delay).await;
    for _ in 0..sends {
        for attempt in 1..=5u32 {
            let signature = callback::sign(
                &sim.config.json_secret,
                chrono::Utc::now().timestamp(),
                body.as_bytes(),
            );
            let sent = sim
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header(callback::HEADER, signature)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => {
                    tracing::warn!(status = %response.status(), attempt, "callback refused")
                }
                Err(error) => tracing::warn!(%error, attempt, "callback failed"),
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    }
}

async fn json_status(State(sim): State<Sim>, Path(reference): Path<String>) -> Response {
    match sim.remember(|m| m.charges.get(&reference).cloned()) {
        Some(charge) => answer(&charge),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown reference"})),
        )
            .into_response(),
    }
}

async fn charges(State(sim): State<Sim>, Path(reference): Path<String>) -> Json<Value> {
    let count = sim.remember(|m| m.charges.get(&reference).map(|c| c.charges).unwrap_or(0));
    Json(json!({"reference": reference, "charges": count}))
}

async fn receive_webhook(State(sim): State<Sim>, headers: HeaderMap, body: String) -> StatusCode {
    let headers = headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    sim.remember(|m| m.webhooks.push(ReceivedWebhook { headers, body }));
    StatusCode::OK
}

async fn list_webhooks(State(sim): State<Sim>) -> Json<Vec<ReceivedWebhook>> {
    Json(sim.remember(|m| m.webhooks.clone()))
}
