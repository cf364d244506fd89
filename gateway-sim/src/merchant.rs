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
    sim.remember(|m| m.webhooks.push(ReceivedWebhook { headers, body }));
    StatusCode::OK
}

async fn list(State(sim): State<Sim>) -> Json<Vec<ReceivedWebhook>> {
    Json(sim.remember(|m| m.webhooks.clone()))
}
