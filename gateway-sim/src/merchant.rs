//! A merchant's webhook endpoint: `POST /merchant/webhooks` records what Paygate sent,
//! as it arrived, and `GET /merchant/webhooks` lists it for the demo and the tests.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::state::Sim;

/// A webhook the simulated merchant received, as it arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedWebhook {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// Webhooks the endpoint remembers; older ones are forgotten (bounded memory in long runs).
pub(crate) const KEPT: usize = 10_000;

pub(crate) fn routes() -> Router<Sim> {
    Router::new().route("/merchant/webhooks", post(receive).get(list))
}

async fn receive(State(sim): State<Sim>, headers: HeaderMap, body: String) -> StatusCode {
    let headers = headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    sim.remember(|m| {
        m.webhooks.push_back(ReceivedWebhook { headers, body });
        if m.webhooks.len() > KEPT {
            m.webhooks.pop_front();
        }
    });
    StatusCode::OK
}

async fn list(State(sim): State<Sim>) -> Json<Vec<ReceivedWebhook>> {
    Json(sim.remember(|m| m.webhooks.iter().cloned().collect()))
}
