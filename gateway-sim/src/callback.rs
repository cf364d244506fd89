//! Signed callbacks to the caller's callback URL, delivered as real gateways do: after a
//! delay, signed over the exact body with the gateway's secret, retried when refused, and
//! abandoned when the simulator shuts down (so shutdown never waits on a dead receiver).

use std::time::Duration;

use paygate_common::signature::callback as signature;

use crate::state::{Gateway, Sim};

/// How often a refused callback is tried before the simulator gives up on it.
const ATTEMPTS: u32 = 5;

/// A callback, in its gateway's wire format, ready to sign and send.
#[derive(Debug, Clone)]
pub(crate) struct Callback {
    /// Whose secret signs it.
    pub(crate) gateway: Gateway,
    pub(crate) url: String,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
}

/// A callback and when to send it.
#[derive(Debug, Clone)]
pub(crate) struct Scheduled {
    pub(crate) callback: Callback,
    pub(crate) delay: Duration,
    /// How many times the same body (same event id) is delivered: 2 simulates a gateway
    /// that notifies twice.
    pub(crate) sends: u32,
}

/// Delivers `scheduled` in the background, tracked so `run` can wait for it.
pub(crate) fn send_later(sim: &Sim, scheduled: Scheduled) {
    let sim_for_task = sim.clone();
    sim.tasks.spawn(async move {
        let sim = sim_for_task;
        tokio::select! {
            () = deliver(&sim, &scheduled) => {}
            () = sim.shutdown.cancelled() => {
                tracing::debug!(url = %scheduled.callback.url, "callback abandoned: shutting down");
            }
        }
    });
}

async fn deliver(sim: &Sim, scheduled: &Scheduled) {
    tokio::time::sleep(scheduled.delay).await;
    for _ in 0..scheduled.sends {
        post_until_accepted(sim, &scheduled.callback).await;
    }
}

async fn post_until_accepted(sim: &Sim, callback: &Callback) {
    for attempt in 1..=ATTEMPTS {
        // Signed per attempt, so a late retry still falls inside the replay window.
        let header = signature::sign(
            sim.secret(callback.gateway),
            chrono::Utc::now().timestamp(),
            callback.body.as_bytes(),
        );
        let sent = sim
            .http
            .post(&callback.url)
            .header(reqwest::header::CONTENT_TYPE, callback.content_type)
            .header(signature::HEADER, header)
            .body(callback.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(status = %response.status(), attempt, "callback refused");
            }
            Err(error) => tracing::warn!(%error, attempt, "callback failed"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    }
}
