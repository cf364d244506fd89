//! The bench's own merchant: created through the admin API, with its webhook endpoint
//! inside the bench, on loopback, recording when each webhook arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::Options;

/// A webhook as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub webhook_id: String,
    pub event_type: String,
}

/// The merchant's webhook endpoint: arrivals by transaction id.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    arrivals: Arc<Mutex<HashMap<String, Vec<Arrival>>>>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/webhooks", listener.local_addr()?);
        let receiver = Receiver {
            url,
            arrivals: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/webhooks",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    state.record(&headers, &body);
                    StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    fn record(&self, headers: &HeaderMap, body: &str) {
        let Ok(body) = serde_json::from_str::<Value>(body) else {
            return;
        };
        let id = body["data"]["id"].as_str().unwrap_or_default().to_owned();
        let arrival = Arrival {
            at: Instant::now(),
            webhook_id: headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            event_type: body["type"].as_str().unwrap_or_default().to_owned(),
        };
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .push(arrival);
    }

    /// The webhooks of `transaction` so far.
    pub fn of(&self, transaction: &str) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(transaction)
            .cloned()
            .unwrap_or_default()
    }
}

/// Whether a webhook announces a final state.
pub fn is_final(event_type: &str) -> bool {
    matches!(event_type, "transaction.completed" | "transaction.failed")
}

/// Creates the bench's merchant; its API key.
pub async fn register(options: &Options, webhook_url: &str) -> anyhow::Result<String> {
    let created: Value = reqwest::Client::new()
        .post(format!("{}/admin/v1/merchants", options.api))
        .bearer_auth(&options.admin_token)
        .json(&json!({"name": "Benchmark merchant", "webhook_url": webhook_url}))
        .send()
        .await
        .context("reaching the api: is the stack up (scripts/up)?")?
        .error_for_status()
        .context("creating the bench's merchant through the admin API")?
        .json()
        .await?;
    created["api_key"]
        .as_str()
        .map(str::to_owned)
        .context("the admin API returned no api_key")
}
